"""Issue #9, no re-entry: the module inside OpenSSL configurations that load the module itself.

An `OPENSSL_CONF` with pkcs11-provider naming this module used to hang every openssl command: the
module imported cryptography, whose bundled OpenSSL read the same file, loaded the provider again
and called C_Initialize again on the same thread. And with `random = PKCS11-RAND`, or the early
load (the provider calls the module while OpenSSL is still loading its configuration), the
module's own TLS to KMS would ask the module, or wait for the host. Also through p11-kit's proxy,
which hands the provider every registered module. Each case here must finish
within its timeout (a timeout fails the test), over HTTP and HTTPS to KMS, and its signature must
verify with plain openssl (no provider) against the KMS public key.

A call that still comes back into the module from inside its own work is refused at once: a
Python host whose logging handler uses the token from inside the module's log calls (on the
caller's thread and on the module's event-loop thread) gets CKR_FUNCTION_FAILED at once, and its
own operations still work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import utils
from hosts import run, tool, verify_signature
from keyseed import seed_key, write_config
from p11kitns import PROXY, P11Kit, module_file

PROVIDER = Path("/usr/lib/x86_64-linux-gnu/ossl-modules/pkcs11.so")
TIMEOUT = 60
MESSAGE = b"signed inside an OpenSSL that loads the module\n" * 10


def provider_conf(module: str, behavior: str, rand: bool = False, default: bool = True) -> str:
    """pkcs11-provider loading `module`; `default=False` leaves the host only OpenSSL's base
    provider beside it (no ciphers: TLS in the host's default context cannot work)."""
    text = textwrap.dedent(f"""\
        openssl_conf = openssl_init
        [openssl_init]
        providers = provider_sect
        {"random = random_sect" if rand else ""}
        [provider_sect]
        {"default" if default else "base"} = default_sect
        pkcs11 = pkcs11_sect
        [default_sect]
        activate = 1
        [pkcs11_sect]
        module = {PROVIDER}
        pkcs11-module-path = {module}
        pkcs11-module-load-behavior = {behavior}
        pkcs11-module-token-pin = any
        activate = 1
        """)
    if rand:
        text += "[random_sect]\nrandom = PKCS11-RAND\n"
    return text


@pytest.fixture(scope="module", params=["http", "https"])
def token(request, tmp_path_factory):
    """An RSA-2048 and a P-256 signing key on token "reentry", over HTTP or HTTPS."""
    server = request.getfixturevalue("kms_server" if request.param == "http"
                                     else "https_kms_server")
    assert PROVIDER.is_file(), f"{PROVIDER} missing: install pkcs11-provider"
    client = server.client()
    keys = {"rsa": seed_key(client, None, "RSA_2048", "SIGN_VERIFY"),
            "ec": seed_key(client, None, "ECC_NIST_P256", "SIGN_VERIFY")}
    d = tmp_path_factory.mktemp(f"reentry-{request.param}")
    entries = ", ".join(f'{{ key = "{k.key_id}", label = "{n}" }}' for n, k in keys.items())
    config = write_config(d / "config.toml", server,
                          f'[[token]]\nlabel = "reentry"\nkeys = [{entries}]\n')
    return d, config, keys


# PKCS11-RAND exists once the provider has loaded the module: with the early load only. Without
# OpenSSL's default provider in the host's context, the module's TLS works only in its own context.
@pytest.mark.parametrize("behavior, rand, default", [
    ("early", False, True), ("late", False, True), ("early", True, True), ("early", False, False)],
    ids=["early", "late", "early-PKCS11-RAND", "early-no-default-provider"])
@pytest.mark.parametrize("name", ["rsa", "ec"])
def test_openssl_with_provider_config(token, module_path, behavior, rand, default, name):
    d, config, keys = token
    openssl = tool("openssl")
    conf = d / f"{behavior}-{rand}-{default}.cnf"
    conf.write_text(provider_conf(module_path, behavior, rand, default))
    env = {**os.environ, "OPENSSL_CONF": str(conf), "PKCS11_KMS_CONFIG": config}
    plain = {**os.environ, "OPENSSL_CONF": os.devnull}
    message = d / "message"
    message.write_bytes(MESSAGE)

    listed = run([openssl, "list", "-providers"], env, TIMEOUT)
    assert listed.returncode == 0 and "pkcs11" in listed.stdout, listed.stderr

    uri = f"pkcs11:token=reentry;object={name}"
    exported = subprocess.run(
        [openssl, "pkey", "-pubin", "-in", f"{uri};type=public", "-outform", "DER"],
        env=env, capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
        check=False)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == keys[name].public_der

    signature = d / f"{name}-{behavior}-{rand}-{default}.sig"
    signed = run([openssl, "dgst", "-sha256", "-sign", f"{uri};type=private", "-out",
                  str(signature), str(message)], env, TIMEOUT)
    assert signed.returncode == 0, signed.stderr
    assert "PIN" not in signed.stdout + signed.stderr
    verify_signature(keys[name].public_der, signature.read_bytes(), MESSAGE, hashes.SHA256())
    # and by plain openssl, no provider
    pub = d / f"{name}.pem"
    pub.write_bytes(serialization.load_der_public_key(keys[name].public_der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    checked = run([openssl, "dgst", "-sha256", "-verify", str(pub), "-signature", str(signature),
                   str(message)], plain, TIMEOUT)
    assert checked.returncode == 0 and "Verified OK" in checked.stdout, checked.stderr

    if rand:  # openssl rand draws from the token's RNG (KMS GenerateRandom)
        drawn = subprocess.run([openssl, "rand", "-hex", "32"], env=env, capture_output=True,
                               text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False)
        assert drawn.returncode == 0, drawn.stderr
        assert len(drawn.stdout.strip()) == 64


HOST = r'''
import logging, sys, time
import pkcs11
from pkcs11 import Mechanism
from pkcs11.exceptions import FunctionFailed

module, label = sys.argv[1], sys.argv[2]
nested = {"refused": 0, "other": []}
session = None

class UseTheToken(logging.Handler):
    """A host's handler that uses the token from inside the module's own log calls."""
    def emit(self, record):
        if session is None or self.busy:
            return
        self.busy = True
        try:
            start = time.monotonic()
            try:
                session.generate_random(8)
                nested["other"].append("CKR_OK")
            except FunctionFailed:
                nested["refused"] += 1
                assert time.monotonic() - start < 1.0, "the nested call waited"
            except Exception as exc:
                nested["other"].append(repr(exc))
        finally:
            self.busy = False

handler = UseTheToken()
handler.busy = False
for name in ("pkcs11_kms", "botocore", "aiobotocore"):
    logging.getLogger(name).addHandler(handler)
    logging.getLogger(name).setLevel(logging.DEBUG)

lib = pkcs11.lib(module)
token = lib.get_token(token_label=label)
with token.open() as s:
    session = s
    key = s.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label="ec")
    signatures = [key.sign(b"message %d" % i, mechanism=Mechanism.ECDSA_SHA256)
                  for i in range(3)]
    # A refused call logs why (at debug) from inside the module: the handler's nested call then
    # comes from inside a PKCS#11 call. (botocore's records of the module's own requests never
    # reach the host's handlers: docs/security.md.)
    for _ in range(2):
        try:
            key.sign(b"x", mechanism=Mechanism.SHA1_RSA_PKCS)
        except pkcs11.exceptions.MechanismInvalid:
            pass
    session = None
print(nested["refused"], ";".join(nested["other"]) or "-")
for sig in signatures:
    print(sig.hex())
'''


def test_python_host_reentering_from_log_handlers_is_refused_at_once(token, module_path):
    d, config, keys = token
    script = d / "host.py"
    script.write_text(HOST)
    env = {**os.environ, "PKCS11_KMS_CONFIG": config, "PKCS11_KMS_LOG": "debug"}
    proc = subprocess.run([sys.executable, str(script), module_path, "reentry"], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr
    first, *signatures = proc.stdout.split()
    refused, others = int(first), signatures.pop(0)
    assert refused > 0, proc.stdout
    assert others == "-", others
    assert len(signatures) == 3
    for i, sig in enumerate(signatures):
        raw = bytes.fromhex(sig)
        der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                         int.from_bytes(raw[32:], "big"))
        verify_signature(keys["ec"].public_der, der, b"message %d" % i, hashes.SHA256())


def test_openssl_with_provider_through_p11kit_proxy(token, module_path):
    """pkcs11-provider handed p11-kit-proxy.so, which loads every registered module: ours too."""
    d, config, keys = token
    openssl = tool("openssl")
    (d / "empty").mkdir(exist_ok=True)
    modules = d / "p11kit-modules"
    modules.mkdir(exist_ok=True)
    conf = d / "proxy.cnf"
    conf.write_text(provider_conf(str(PROXY), "early"))
    env = {**os.environ, "OPENSSL_CONF": str(conf), "PKCS11_KMS_CONFIG": config,
           "HOME": str(d)}
    kit = P11Kit(modules, d, env, {}, module_path, d)
    kit.install(module_file(module_path))
    message = d / "message"
    message.write_bytes(MESSAGE)
    uri = "pkcs11:token=reentry;object=ec"
    signature = d / "proxy.sig"
    signed = kit.run([openssl, "dgst", "-sha256", "-sign", f"{uri};type=private", "-out",
                      str(signature), str(message)], timeout=TIMEOUT)
    assert signed.returncode == 0, signed.stderr
    verify_signature(keys["ec"].public_der, signature.read_bytes(), MESSAGE, hashes.SHA256())
