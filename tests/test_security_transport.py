"""Transport (docs/security.md, "Transport"): plain http:// only to loopback unless the config
says allow_insecure_http = true (then a warning at every start); TLS always verified. Each case
runs the real library in a C host (tests/harness/secure_host.c)."""

from __future__ import annotations

import os
import re

import pytest
from hosts import build_c_host, run
from keyseed import REGION, seed_key

from pkcs11_kms import config
from pkcs11_kms.emulator.tls import make_test_pki


@pytest.fixture(scope="module")
def secure_host(tmp_path_factory) -> str:
    return build_c_host("secure_host", tmp_path_factory.mktemp("host"))


def host(secure_host: str, module_path: str, text: str, tmp_path, **env: str) -> tuple[str, str]:
    """The host's stdout and stderr with `text` as the config (PKCS11_KMS_CONFIG)."""
    path = tmp_path / "config.toml"
    path.write_text(f'region = "{REGION}"\nmax_attempts = 1\nconnect_timeout = 2\n' + text)
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("PKCS11_KMS", "AWS_ENDPOINT_URL", "AWS_CA_BUNDLE"))}
    proc = run([secure_host, module_path], {**environ, "PKCS11_KMS_CONFIG": str(path), **env},
               timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, proc.stderr


@pytest.mark.parametrize("host_name, ok", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("[::1]", True), ("localhost", True),
    ("LocalHost.", True), ("[::ffff:127.0.0.1]", True), ("10.0.0.1", False),
    ("kms.example.com", False), ("[2001:db8::1]", False), ("localhost.example.com", False),
    ("127.0.0.1.nip.io", False),
])
def test_loopback(host_name, ok):
    assert config.insecure_http(f"http://{host_name}:4566/") is not ok
    assert not config.insecure_http(f"https://{host_name}/")


def test_http_to_another_host_is_refused(secure_host, module_path, tmp_path):
    out, err = host(secure_host, module_path, 'endpoint_url = "http://kms.example.com"\n', tmp_path)
    assert "C_Initialize 0x6\n" in out
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "endpoint_url: 'http://kms.example.com' is plain http://" in errors[0]
    assert "allow_insecure_http = true" in errors[0]


def test_http_to_loopback_works(secure_host, module_path, tmp_path, kms_server, seeded):
    port = kms_server.endpoint_url.rsplit(":", 1)[1]
    out, _ = host(secure_host, module_path, f'endpoint_url = "http://localhost:{port}"\n', tmp_path)
    assert "C_Initialize 0\n" in out and re.search(r"^objects 0 [1-9]", out, re.MULTILINE), out


def test_allow_insecure_http_warns_at_every_start(secure_host, module_path, tmp_path):
    log = tmp_path / "kms.log"
    text = (f'endpoint_url = "http://kms.example.com"\nallow_insecure_http = true\n'
            f'log_file = "{log}"\n[[token]]\nlabel = "t"\nkeys = ["alias/none"]\n')
    for start in (1, 2):
        out, _ = host(secure_host, module_path, text, tmp_path)
        assert "C_Initialize 0\n" in out
        warnings = [line for line in log.read_text().splitlines()
                    if "allow_insecure_http" in line]
        assert len(warnings) == start, log.read_text()
        assert " WARNING " in warnings[-1] and "http://kms.example.com" in warnings[-1]
        assert "unencrypted" in warnings[-1]


def test_http_endpoint_from_the_environment_is_refused(secure_host, module_path, tmp_path):
    """AWS_ENDPOINT_URL_KMS to another host: the module refuses it before sending anything."""
    out, err = host(secure_host, module_path, '[[token]]\nlabel = "t"\nkeys = ["alias/x"]\n',
                    tmp_path, AWS_ENDPOINT_URL_KMS="http://kms.invalid:4566")
    assert "C_Initialize 0\n" in out and not re.search(r"^objects 0 ", out, re.MULTILINE), out
    assert "refusing plain http:// to http://kms.invalid:4566" in err, err


def test_tls_is_verified(secure_host, module_path, tmp_path, https_kms_server):
    """An endpoint whose certificate the CAs do not vouch for is refused, with or without a
    ca_bundle (another CA's); there is no setting that turns verification off."""
    seed_key(https_kms_server.client(), None, "ECC_NIST_P256", "SIGN_VERIFY")
    (tmp_path / "other").mkdir()
    other_ca = make_test_pki(tmp_path / "other")[0]
    endpoint = f'endpoint_url = "{https_kms_server.endpoint_url}"\n'
    for extra in ("", f'ca_bundle = "{other_ca}"\n'):
        out, err = host(secure_host, module_path, endpoint + extra, tmp_path)
        assert "C_Initialize 0\n" in out and not re.search(r"^objects 0 ", out, re.MULTILINE), out
        assert "code=TlsError" in err, err
    out, _ = host(secure_host, module_path,
                  endpoint + f'ca_bundle = "{https_kms_server.ca_bundle}"\n', tmp_path)
    assert re.search(r"^objects 0 [1-9]", out, re.MULTILINE), out
    for off in ("verify = false\n", "verify_tls = false\n", "insecure = true\n"):
        out, _ = host(secure_host, module_path, endpoint + off, tmp_path)
        assert "C_Initialize 0x6\n" in out
