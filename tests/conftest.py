"""Shared fixtures: a KMS server on loopback, dummy AWS credentials, boto3 clients to seed keys."""

from __future__ import annotations

import os
import tempfile

import pytest
from hosts import build_c_host
from keyseed import REGION, SEED, SeededKey, seed_key, write_config

# Never reach the EC2 metadata service or real AWS from tests (docs/design.md, "The emulator").
for _name, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ[_name] = _value
for _name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS", "PKCS11_KMS_CONFIG"):
    os.environ.pop(_name, None)
# The key cache of every test process and host it starts: the session's own, never ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="pkcs11-kms-test-cache-")

@pytest.fixture(scope="session")
def kms_server():
    """The project's KMS emulator (moto with KMS's asymmetric semantics) on 127.0.0.1."""
    from pkcs11_kms.emulator.testing import EmulatorProcess

    with EmulatorProcess() as server:
        yield server


@pytest.fixture(scope="session")
def https_kms_server(tmp_path_factory):
    """The emulator over HTTPS with a throwaway CA (`.ca_bundle`): real KMS is HTTPS, and the
    module's TLS then runs inside an OpenSSL-based host."""
    from pkcs11_kms.emulator.testing import EmulatorProcess
    from pkcs11_kms.emulator.tls import make_test_pki

    ca, cert, key = make_test_pki(tmp_path_factory.mktemp("pki"))
    with EmulatorProcess(tls_cert=str(cert), tls_key=str(key), ca_bundle=str(ca)) as server:
        yield server


@pytest.fixture(scope="session")
def seeded(kms_server) -> dict[str, SeededKey]:
    """The three acceptance keys by alias, plus `symmetric` and `disabled` keys to be skipped."""
    client = kms_server.client()
    keys = {alias: seed_key(client, alias, spec, usage) for alias, spec, usage in SEED}
    keys["symmetric"] = seed_key(client, "symmetric", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")
    keys["disabled"] = seed_key(client, "disabled", "ECC_NIST_P384", "SIGN_VERIFY")
    client.disable_key(KeyId=keys["disabled"].key_id)
    return keys


@pytest.fixture(scope="session")
def acceptance_config(tmp_path_factory, kms_server, seeded) -> str:
    """A config naming the RSA-2048 sign, P-256 sign and RSA-3072 decrypt keys (issue #2)."""
    path = tmp_path_factory.mktemp("config") / "config.toml"
    return write_config(
        path,
        kms_server,
        '[[token]]\nlabel = "acceptance"\n'
        f'keys = ["alias/web-tls", "{seeded["ec-sign"].arn}", '
        f'{{ key = "{seeded["decrypt"].key_id}", label = "decrypt" }}]\n',
    )


@pytest.fixture(scope="session")
def module_path() -> str:
    from pkcs11_kms import module_path

    path = module_path()
    assert path.is_file(), "build the library first: pip install -e ."
    return str(path)


@pytest.fixture(scope="session")
def harness(tmp_path_factory) -> str:
    """Our C host, tests/harness/p11harness.c."""
    return build_c_host("p11harness", tmp_path_factory.mktemp("harness"))
