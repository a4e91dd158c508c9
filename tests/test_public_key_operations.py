"""public_key_operations = "kms": verify and encrypt by KMS (for CloudTrail), and logs without data."""

from __future__ import annotations

import os
import subprocess
import sys

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from pkcs11 import MGF, Mechanism, ObjectClass

from keyseed import key_entries, seed_key, write_config

MESSAGE = b"verified inside KMS"


@pytest.fixture(scope="module")
def keys(kms_server):
    client = kms_server.client()
    return {
        "rsa": seed_key(client, None, "RSA_2048", "SIGN_VERIFY"),
        "ec": seed_key(client, None, "ECC_NIST_P521", "SIGN_VERIFY"),
        "oaep": seed_key(client, None, "RSA_2048", "ENCRYPT_DECRYPT"),
    }


@pytest.fixture(scope="module")
def config(tmp_path_factory, kms_server, keys):
    entries = key_entries(keys)
    return write_config(
        tmp_path_factory.mktemp("kmsops") / "config.toml", kms_server,
        'max_attempts = 1\npublic_key_operations = "kms"\n'
        f'[[token]]\nlabel = "audited"\nkeys = [{entries}]\n')


@pytest.fixture(scope="module")
def token(module_path, config):
    os.environ["PKCS11_KMS_CONFIG"] = config
    lib = pkcs11.lib(module_path)
    lib.reinitialize()
    yield lib.get_token(token_label="audited")
    os.environ.pop("PKCS11_KMS_CONFIG", None)


@pytest.fixture
def faults(kms_server):
    yield kms_server
    kms_server.clear_faults()


@pytest.mark.parametrize("label, mech", [("rsa", Mechanism.SHA256_RSA_PKCS),
                                         ("ec", Mechanism.ECDSA_SHA512)])
def test_verify_goes_to_kms(token, faults, label, mech):
    with token.open() as s:
        signature = s.get_key(ObjectClass.PRIVATE_KEY, label=label).sign(MESSAGE, mechanism=mech)
        public = s.get_key(ObjectClass.PUBLIC_KEY, label=label)
        assert public.verify(MESSAGE, signature, mechanism=mech)
        assert not public.verify(MESSAGE + b"?", signature, mechanism=mech)
        faults.set_faults(error_code="KMSInternalException", operations=["Verify"])
        with pytest.raises(pkcs11.exceptions.DeviceError):  # proof that KMS did the work
            public.verify(MESSAGE, signature, mechanism=mech)


def test_encrypt_goes_to_kms(token, faults, keys):
    params = (Mechanism.SHA256, MGF.SHA256, None)
    with token.open() as s:
        public = s.get_key(ObjectClass.PUBLIC_KEY, label="oaep")
        ciphertext = public.encrypt(b"secret", mechanism=Mechanism.RSA_PKCS_OAEP,
                                    mechanism_param=params)
        private = s.get_key(ObjectClass.PRIVATE_KEY, label="oaep")
        assert private.decrypt(ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP,
                               mechanism_param=params) == b"secret"
        faults.set_faults(error_code="KMSInternalException", operations=["Encrypt"])
        with pytest.raises(pkcs11.exceptions.DeviceError):
            public.encrypt(b"secret", mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=params)


LOG_PROBE = """
import os, pkcs11
from pkcs11 import Mechanism, MGF, ObjectClass
lib = pkcs11.lib(os.environ["MODULE"])
tok = lib.get_token(token_label="audited")
with tok.open(user_pin="pin-0000-do-not-log") as s:
    s.get_key(ObjectClass.PRIVATE_KEY, label="oaep").decrypt(
        bytes.fromhex(os.environ["CIPHERTEXT"]), mechanism=Mechanism.RSA_PKCS_OAEP,
        mechanism_param=(Mechanism.SHA256, MGF.SHA256, None))
    try:
        s.get_key(ObjectClass.PRIVATE_KEY, label="rsa").sign(b"message-do-not-log",
                                                             mechanism=Mechanism.SHA256_RSA_PKCS)
    except pkcs11.exceptions.PKCS11Error:
        pass
"""


def test_debug_logs_hold_no_data_pins_or_credentials(module_path, config, keys, faults):
    """Debug logging on, a failing KMS call included: no plaintext, input, PIN or secret appears."""
    public = serialization.load_der_public_key(keys["oaep"].public_der)
    plaintext = b"plaintext-do-not-log"
    ciphertext = public.encrypt(plaintext, padding.OAEP(padding.MGF1(hashes.SHA256()),
                                                         hashes.SHA256(), None))
    faults.set_faults(error_code="KMSInternalException", operations=["Sign"])  # a failure logs
    env = {**os.environ, "PKCS11_KMS_CONFIG": config, "PKCS11_KMS_LOG": "debug",
           "MODULE": module_path, "CIPHERTEXT": ciphertext.hex(),
           "AWS_SECRET_ACCESS_KEY": "secret-key-do-not-log"}
    r = subprocess.run([sys.executable, "-c", LOG_PROBE], env=env, capture_output=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    log = r.stderr
    assert b"pkcs11-kms" in log and b"KMSInternalException" in log  # debug on, failure logged
    for secret in (b"message-do-not-log", b"pin-0000-do-not-log", plaintext,
                   b"secret-key-do-not-log", ciphertext.hex().encode()[:32]):
        assert secret not in log
    assert r.stdout == b""  # nothing on the host's stdout
