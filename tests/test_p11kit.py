"""p11-kit: conf/p11-kit/kms.module registers the module; `p11-kit list-modules` shows it and its
token, the p11-kit proxy module (p11-kit-proxy.so) exposes the token to pkcs11-tool, signatures go
through the proxy, and GnuTLS finds the token without being told the library's path.

p11-kit reads module configs from fixed directories, and skips the user's (~/.config/pkcs11/modules)
in programs running as root. So the tests install the module file into a temporary directory and
show it to p11-kit: as root (CI) in a private mount namespace where that directory is mounted over
/usr/share/p11-kit/modules (and an empty one over /etc/pkcs11/modules), which also hides the
machine's other modules; as another user through HOME's ~/.config/pkcs11/modules
(tests/p11kitns.py).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from hosts import tool, verify_signature
from keyseed import SeededKey, key_entries, seed_key, write_config
from p11kitns import MODULE_FILE, PROXY, SYSTEM_DIRS, P11Kit, module_file

MESSAGE = b"signed through p11-kit's proxy\n" * 20


@pytest.fixture(scope="module")
def p11kit(https_kms_server, tmp_path_factory, module_path) -> P11Kit:
    """Token "p11kit" (KMS over HTTPS) with an RSA-2048 and a P-256 key, and conf/p11-kit's
    kms.module installed in a temporary p11-kit config."""
    tool("p11-kit", "p11-kit")
    assert PROXY.is_file(), f"{PROXY} missing: install p11-kit-modules"
    client = https_kms_server.client()
    keys = {"rsa": seed_key(client, None, "RSA_2048", "SIGN_VERIFY"),
            "ec": seed_key(client, None, "ECC_NIST_P256", "SIGN_VERIFY")}
    tmp = tmp_path_factory.mktemp("p11kit")
    entries = key_entries(keys, by="key_id")
    config = write_config(tmp / "config.toml", https_kms_server,
                          f'[[token]]\nlabel = "p11kit"\nkeys = [{entries}]\n')
    home = tmp / "home"
    user_modules = home / ".config" / "pkcs11" / "modules"
    user_modules.mkdir(parents=True)
    (tmp / "empty").mkdir()
    # As root the namespace mounts user_modules over the system directory; otherwise p11-kit
    # reads it as the user's directory.
    env = {**os.environ, "PKCS11_KMS_CONFIG": config, "HOME": str(home)}
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("P11_KIT_NO_USER_CONFIG", None)
    kit = P11Kit(user_modules, home, env, keys, module_path, tmp)
    kit.install(module_file(module_path))
    return kit


def ckid(key: SeededKey) -> str:
    return key.key_id.replace("-", "")


def test_module_file_has_the_module_line_only():
    """The shipped file: comments, and one setting, the placeholder module path."""
    settings = [line for line in MODULE_FILE.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert settings == ["module: @MODULE_PATH@"]


def test_list_modules_shows_module_and_token(p11kit):
    proc = p11kit.run([tool("p11-kit", "p11-kit"), "list-modules"])
    assert proc.returncode == 0, proc.stderr
    # p11-kit 0.24 heads a module "kms: PATH"; 0.25 "module: kms", then "    path: PATH"
    path = re.escape(p11kit.module_path)
    section = re.split(rf"^(?:kms: {path}|module: kms\n\s+path: {path})\n", proc.stdout, maxsplit=1,
                       flags=re.M)
    assert len(section) == 2, proc.stdout
    body = re.split(r"^\S", section[1], maxsplit=1, flags=re.M)[0]
    assert "library-manufacturer: pkcs11-kms" in body
    assert re.search(r"^\s+token: p11kit$", body, re.M), body
    if os.geteuid() == 0:  # the namespace hides the machine's own modules
        names = (re.findall(r"^module: (\S+)$", proc.stdout, re.M)
                 or re.findall(r"^(\S+): ", proc.stdout, re.M))
        assert names == ["kms"], proc.stdout


def proxy_tool(p11kit: P11Kit, *args: str, env=None):
    return p11kit.run([tool("pkcs11-tool", "opensc"), "--module", str(PROXY), *args], env)


def test_proxy_lists_token(p11kit):
    proc = proxy_tool(p11kit, "-L")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\s+token label\s+: p11kit$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^\s+token manufacturer\s+: pkcs11-kms$", proc.stdout, re.M)


def test_proxy_lists_objects(p11kit):
    proc = proxy_tool(p11kit, "--token-label", "p11kit", "-O")
    assert proc.returncode == 0, proc.stderr
    found = re.findall(r"^(Private|Public) Key Object; (RSA|EC)\b.*\n\s+(?:.*\n\s+)*?label:\s+(\S+)"
                       r"\n\s+ID:\s+(\S+)", proc.stdout, re.M)
    rsa, ec = ckid(p11kit.keys["rsa"]), ckid(p11kit.keys["ec"])
    assert sorted(found) == sorted([("Private", "RSA", "rsa", rsa), ("Public", "RSA", "rsa", rsa),
                                    ("Private", "EC", "ec", ec), ("Public", "EC", "ec", ec)]), \
        proc.stdout


@pytest.mark.parametrize("name, mechanism, algorithm, pss", [
    ("rsa", "SHA256-RSA-PKCS", hashes.SHA256(), False),
    ("rsa", "SHA384-RSA-PKCS-PSS", hashes.SHA384(), True),
    ("ec", "ECDSA-SHA256", hashes.SHA256(), False),
], ids=["rsa-pkcs1-sha256", "rsa-pss-sha384", "ecdsa-sha256"])
def test_proxy_signs(p11kit, tmp_path, name, mechanism, algorithm, pss):
    """A signature made in KMS through p11-kit's proxy, checked with KMS's public key."""
    data, signature = tmp_path / "data", tmp_path / "signature"
    data.write_bytes(MESSAGE)
    extra = ["--signature-format", "openssl"] if name == "ec" else []
    if pss:
        extra += ["--mgf", "MGF1-SHA384", "--salt-len", "-1"]
    proc = proxy_tool(p11kit, "--token-label", "p11kit", "--id", ckid(p11kit.keys[name]),
                      "--sign", "-m", mechanism, "-i", str(data), "-o", str(signature), *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verify_signature(p11kit.keys[name].public_der, signature.read_bytes(), MESSAGE, algorithm,
                     pss=pss)


def test_gnutls_finds_registered_token(p11kit):
    """p11tool without --provider: GnuTLS loads the modules registered with p11-kit."""
    p11tool = tool("p11tool", "gnutls-bin")
    urls = p11kit.run([p11tool, "--list-token-urls"])
    assert urls.returncode == 0, urls.stderr
    assert re.search(r"^pkcs11:.*manufacturer=pkcs11-kms;.*token=p11kit$", urls.stdout, re.M), \
        urls.stdout
    sign = p11kit.run([p11tool, "--test-sign", "pkcs11:token=p11kit;object=ec;type=private"])
    output = sign.stdout + sign.stderr
    assert sign.returncode == 0, output
    assert "Verifying against public key in the token... ok" in output


@pytest.fixture
def reserved(p11kit, https_kms_server):
    """kms.module with `x-init-reserved: <config of token "reserved">`, and an environment that
    names no config (HOME has none; the endpoint variables keep a default config on loopback)."""
    config = Path(write_config(p11kit.tmp / "reserved.toml", https_kms_server,
                               f'[[token]]\nlabel = "reserved"\n'
                               f'keys = ["{p11kit.keys["ec"].key_id}"]\n'))
    p11kit.install(module_file(p11kit.module_path, f"x-init-reserved: {config}\n"))
    env = {k: v for k, v in p11kit.env.items() if k != "PKCS11_KMS_CONFIG"}
    env.update(AWS_ENDPOINT_URL_KMS=https_kms_server.endpoint_url,
               AWS_CA_BUNDLE=str(https_kms_server.ca_bundle))
    try:
        yield env
    finally:
        p11kit.install(module_file(p11kit.module_path))


def test_x_init_reserved_names_the_config(p11kit, reserved):
    """p11-kit passes x-init-reserved to C_Initialize (pReserved), which the module takes as its
    config file: for p11-kit itself and for every program using the proxy."""
    listed = p11kit.run([tool("p11-kit", "p11-kit"), "list-modules"], reserved)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^\s+token: reserved$", listed.stdout, re.M), listed.stdout
    proxied = proxy_tool(p11kit, "-L", env=reserved)
    assert proxied.returncode == 0, proxied.stderr
    assert re.search(r"^\s+token label\s+: reserved$", proxied.stdout, re.M), proxied.stdout


def test_gnutls_ignores_x_init_reserved(p11kit, reserved):
    """GnuTLS limit: it loads registered modules itself and calls C_Initialize with its own
    arguments, without x-init-reserved, so the module falls back to its default config (here: no
    file, one token of every key). Give GnuTLS programs $PKCS11_KMS_CONFIG or a default file."""
    urls = p11kit.run([tool("p11tool", "gnutls-bin"), "--list-token-urls"], reserved)
    assert urls.returncode == 0, urls.stderr
    ours = [u for u in urls.stdout.splitlines() if "manufacturer=pkcs11-kms" in u]
    assert len(ours) == 1, urls.stdout
    assert "token=reserved" not in ours[0]


def test_namespace_leaves_the_system_alone(p11kit):
    """The temporary module directory never shows outside the test's mount namespace."""
    for directory in SYSTEM_DIRS:
        if directory.is_dir():
            assert not (directory / "kms.module").exists()
    proc = subprocess.run([tool("p11-kit", "p11-kit"), "list-modules"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "HOME": "/nonexistent"})
    assert p11kit.module_path not in proc.stdout
