"""Every error code where the KMS API reference puts it: key state, key usage, lengths, DryRun."""

from __future__ import annotations

import os
import uuid
from types import SimpleNamespace

import pytest
from botocore.exceptions import ClientError
from emulator_support import assert_refused, error_code, new_key

P256, ED, MLDSA = ("ECC_NIST_P256", "SIGN_VERIFY"), ("ECC_NIST_EDWARDS25519", "SIGN_VERIFY"), \
    ("ML_DSA_44", "SIGN_VERIFY")
RSA_S, RSA_E = ("RSA_2048", "SIGN_VERIFY"), ("RSA_2048", "ENCRYPT_DECRYPT")
SYM, HMAC, AGREE = ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"), ("HMAC_256", "GENERATE_VERIFY_MAC"), \
    ("ECC_NIST_P256", "KEY_AGREEMENT")


@pytest.fixture(scope="module")
def ctx(kms, raw_kms, keys):
    other_symmetric = new_key(kms, *SYM)
    ciphertext = kms.encrypt(KeyId=keys[SYM].key_id, Plaintext=b"secret")["CiphertextBlob"]
    return SimpleNamespace(kms=kms, raw=raw_kms, id=lambda k: keys[k].key_id,
                           other_symmetric=other_symmetric.key_id, ciphertext=ciphertext)


def sign(c, key, message=b"message", algorithm="ECDSA_SHA_256", client=None, **kw):
    return (client or c.kms).sign(KeyId=c.id(key) if isinstance(key, tuple) else key,
                                  Message=message, SigningAlgorithm=algorithm, **kw)


def encrypt(c, key, plaintext=b"secret", client=None, **kw):
    return (client or c.kms).encrypt(KeyId=c.id(key), Plaintext=plaintext, **kw)


ERROR_CASES = {
    # NotFoundException: no such key, alias, or a malformed identifier
    "sign-unknown-key": (lambda c: sign(c, str(uuid.uuid4())), "NotFoundException"),
    "sign-unknown-alias": (lambda c: sign(c, "alias/no-such-alias"), "NotFoundException"),
    "sign-malformed-key-id": (lambda c: sign(c, "not-a-key-id"), "NotFoundException"),
    "get-public-key-unknown": (lambda c: c.kms.get_public_key(KeyId=str(uuid.uuid4())),
                               "NotFoundException"),
    # InvalidKeyUsageException: wrong KeyUsage, or an algorithm the key spec does not have
    "sign-with-encrypt-key": (lambda c: sign(c, RSA_E, algorithm="RSASSA_PSS_SHA_256"),
                              "InvalidKeyUsageException"),
    "sign-with-symmetric-key": (lambda c: sign(c, SYM), "InvalidKeyUsageException"),
    "sign-with-hmac-key": (lambda c: sign(c, HMAC), "InvalidKeyUsageException"),
    "sign-with-key-agreement-key": (lambda c: sign(c, AGREE), "InvalidKeyUsageException"),
    "sign-p256-with-sha384": (lambda c: sign(c, P256, algorithm="ECDSA_SHA_384"),
                              "InvalidKeyUsageException"),
    "sign-ec-with-rsa-algorithm": (lambda c: sign(c, P256, algorithm="RSASSA_PSS_SHA_256"),
                                   "InvalidKeyUsageException"),
    "sign-rsa-with-ecdsa": (lambda c: sign(c, RSA_S), "InvalidKeyUsageException"),
    "sign-sm2dsa": (lambda c: sign(c, RSA_S, algorithm="SM2DSA"), "InvalidKeyUsageException"),
    "sign-ed25519-with-ml-dsa": (lambda c: sign(c, ED, algorithm="ML_DSA_SHAKE_256"),
                                 "InvalidKeyUsageException"),
    "verify-with-encrypt-key": (lambda c: c.kms.verify(
        KeyId=c.id(RSA_E), Message=b"m", Signature=b"s" * 256,
        SigningAlgorithm="RSASSA_PSS_SHA_256"), "InvalidKeyUsageException"),
    "encrypt-with-sign-key": (lambda c: encrypt(c, RSA_S, EncryptionAlgorithm="RSAES_OAEP_SHA_1"),
                              "InvalidKeyUsageException"),
    "encrypt-rsa-symmetric-default": (lambda c: encrypt(c, RSA_E), "InvalidKeyUsageException"),
    "encrypt-symmetric-with-oaep": (lambda c: encrypt(
        c, SYM, EncryptionAlgorithm="RSAES_OAEP_SHA_256"), "InvalidKeyUsageException"),
    "encrypt-sm2pke": (lambda c: encrypt(c, RSA_E, EncryptionAlgorithm="SM2PKE"),
                       "InvalidKeyUsageException"),
    "decrypt-rsa-without-algorithm": (lambda c: c.kms.decrypt(
        KeyId=c.id(RSA_E), CiphertextBlob=os.urandom(256)), "InvalidKeyUsageException"),
    "generate-data-key-rsa": (lambda c: c.kms.generate_data_key(KeyId=c.id(RSA_E),
                                                                KeySpec="AES_256"),
                              "InvalidKeyUsageException"),
    "generate-mac-with-sign-key": (lambda c: c.kms.generate_mac(
        KeyId=c.id(P256), Message=b"m", MacAlgorithm="HMAC_SHA_256"), "InvalidKeyUsageException"),
    # ValidationException: enum values, lengths, message types
    "sign-unknown-algorithm": (lambda c: sign(c, P256, algorithm="ECDSA_SHA_1", client=c.raw),
                               "ValidationException"),
    "sign-unknown-message-type": (lambda c: sign(c, P256, MessageType="HASH", client=c.raw),
                                  "ValidationException"),
    "sign-digest-too-short": (lambda c: sign(c, P256, os.urandom(31), MessageType="DIGEST"),
                              "ValidationException"),
    "sign-digest-too-long": (lambda c: sign(c, P256, os.urandom(33), MessageType="DIGEST"),
                             "ValidationException"),
    "sign-sha384-digest-of-32": (lambda c: sign(c, RSA_S, os.urandom(32), MessageType="DIGEST",
                                                algorithm="RSASSA_PKCS1_V1_5_SHA_384"),
                                 "ValidationException"),
    "sign-raw-over-4096": (lambda c: sign(c, P256, os.urandom(4097)), "ValidationException"),
    "sign-empty-message": (lambda c: sign(c, P256, b"", client=c.raw), "ValidationException"),
    "sign-ed25519-digest": (lambda c: sign(c, ED, os.urandom(64), MessageType="DIGEST",
                                           algorithm="ED25519_SHA_512"), "ValidationException"),
    "sign-ed25519ph-raw": (lambda c: sign(c, ED, algorithm="ED25519_PH_SHA_512"),
                           "ValidationException"),
    "sign-ml-dsa-digest": (lambda c: sign(c, MLDSA, os.urandom(64), MessageType="DIGEST",
                                          algorithm="ML_DSA_SHAKE_256"), "ValidationException"),
    "sign-external-mu-of-32": (lambda c: sign(c, MLDSA, os.urandom(32), MessageType="EXTERNAL_MU",
                                              algorithm="ML_DSA_SHAKE_256"),
                               "ValidationException"),
    "sign-rsa-external-mu": (lambda c: sign(c, RSA_S, os.urandom(64), MessageType="EXTERNAL_MU",
                                            algorithm="RSASSA_PSS_SHA_256"),
                             "ValidationException"),
    "verify-empty-signature": (lambda c: c.raw.verify(
        KeyId=c.id(P256), Message=b"m", Signature=b"", SigningAlgorithm="ECDSA_SHA_256"),
        "ValidationException"),
    "encrypt-over-4096": (lambda c: encrypt(c, SYM, os.urandom(4097)), "ValidationException"),
    "encrypt-rsa-with-context": (lambda c: encrypt(c, RSA_E, EncryptionAlgorithm="RSAES_OAEP_SHA_1",
                                                   EncryptionContext={"a": "b"}),
                                 "ValidationException"),
    "decrypt-oaep-without-key-id": (lambda c: c.kms.decrypt(
        CiphertextBlob=os.urandom(256), EncryptionAlgorithm="RSAES_OAEP_SHA_256"),
        "ValidationException"),
    "generate-random-0": (lambda c: c.raw.generate_random(NumberOfBytes=0), "ValidationException"),
    "generate-random-1025": (lambda c: c.raw.generate_random(NumberOfBytes=1025),
                             "ValidationException"),
    "generate-random-missing": (lambda c: c.raw.generate_random(), "ValidationException"),
    "create-ecc-for-encryption": (lambda c: c.kms.create_key(
        KeySpec="ECC_NIST_P256", KeyUsage="ENCRYPT_DECRYPT"), "ValidationException"),
    "create-secp256k1-key-agreement": (lambda c: c.kms.create_key(
        KeySpec="ECC_SECG_P256K1", KeyUsage="KEY_AGREEMENT"), "ValidationException"),
    "create-ed25519-key-agreement": (lambda c: c.kms.create_key(
        KeySpec="ECC_NIST_EDWARDS25519", KeyUsage="KEY_AGREEMENT"), "ValidationException"),
    "create-ml-dsa-default-usage": (lambda c: c.kms.create_key(KeySpec="ML_DSA_65"),
                                    "ValidationException"),
    "create-hmac-default-usage": (lambda c: c.kms.create_key(KeySpec="HMAC_256"),
                                  "ValidationException"),
    "create-unknown-spec": (lambda c: c.raw.create_key(KeySpec="RSA_1024",
                                                       KeyUsage="SIGN_VERIFY"),
                            "ValidationException"),
    # the rest
    "create-sm2": (lambda c: c.kms.create_key(KeySpec="SM2", KeyUsage="SIGN_VERIFY"),
                   "UnsupportedOperationException"),
    "get-public-key-symmetric": (lambda c: c.kms.get_public_key(KeyId=c.id(SYM)),
                                 "UnsupportedOperationException"),
    "get-public-key-hmac": (lambda c: c.kms.get_public_key(KeyId=c.id(HMAC)),
                            "UnsupportedOperationException"),
    "verify-bad-signature": (lambda c: c.kms.verify(
        KeyId=c.id(P256), Message=b"m", Signature=os.urandom(72),
        SigningAlgorithm="ECDSA_SHA_256"), "KMSInvalidSignatureException"),
    "decrypt-rsa-garbage": (lambda c: c.kms.decrypt(
        KeyId=c.id(RSA_E), CiphertextBlob=os.urandom(256), EncryptionAlgorithm="RSAES_OAEP_SHA_1"),
        "InvalidCiphertextException"),
    "decrypt-garbage-without-key-id": (lambda c: c.kms.decrypt(CiphertextBlob=os.urandom(100)),
                                       "InvalidCiphertextException"),
    "decrypt-under-another-key": (lambda c: c.kms.decrypt(
        KeyId=c.other_symmetric, CiphertextBlob=c.ciphertext), "IncorrectKeyException"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_error_code(ctx, case):
    call, expected = ERROR_CASES[case]
    assert_refused(call, ctx, expected)


# -- key states: each key-using operation refuses a Disabled or PendingDeletion key --

STATE_OPERATIONS = {
    "Sign": lambda c, k: c.kms.sign(KeyId=k.sign, Message=b"m",
                                    SigningAlgorithm="RSASSA_PSS_SHA_256"),
    "Verify": lambda c, k: c.kms.verify(KeyId=k.sign, Message=b"m", Signature=k.signature,
                                        SigningAlgorithm="RSASSA_PSS_SHA_256"),
    "GetPublicKey": lambda c, k: c.kms.get_public_key(KeyId=k.sign),
    "Encrypt-RSA": lambda c, k: c.kms.encrypt(KeyId=k.rsa, Plaintext=b"p",
                                              EncryptionAlgorithm="RSAES_OAEP_SHA_256"),
    "Decrypt-RSA": lambda c, k: c.kms.decrypt(KeyId=k.rsa, CiphertextBlob=k.rsa_ciphertext,
                                              EncryptionAlgorithm="RSAES_OAEP_SHA_256"),
    "Encrypt": lambda c, k: c.kms.encrypt(KeyId=k.sym, Plaintext=b"p"),
    "Decrypt": lambda c, k: c.kms.decrypt(KeyId=k.sym, CiphertextBlob=k.sym_ciphertext),
    "Decrypt-without-key-id": lambda c, k: c.kms.decrypt(CiphertextBlob=k.sym_ciphertext),
    "GenerateDataKey": lambda c, k: c.kms.generate_data_key(KeyId=k.sym, NumberOfBytes=32),
    "GenerateMac": lambda c, k: c.kms.generate_mac(KeyId=k.mac, Message=b"m",
                                                   MacAlgorithm="HMAC_SHA_256"),
}


def _state_keys(kms) -> SimpleNamespace:
    k = SimpleNamespace(sign=new_key(kms, *RSA_S).key_id, rsa=new_key(kms, *RSA_E).key_id,
                        sym=new_key(kms, *SYM).key_id, mac=new_key(kms, *HMAC).key_id)
    k.signature = kms.sign(KeyId=k.sign, Message=b"m",
                           SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
    k.rsa_ciphertext = kms.encrypt(KeyId=k.rsa, Plaintext=b"p",
                                   EncryptionAlgorithm="RSAES_OAEP_SHA_256")["CiphertextBlob"]
    k.sym_ciphertext = kms.encrypt(KeyId=k.sym, Plaintext=b"p")["CiphertextBlob"]
    k.all = [k.sign, k.rsa, k.sym, k.mac]
    return k


@pytest.fixture(scope="module")
def disabled(kms):
    k = _state_keys(kms)
    for key_id in k.all:
        kms.disable_key(KeyId=key_id)
    return k


@pytest.fixture(scope="module")
def pending(kms):
    k = _state_keys(kms)
    for key_id in k.all:
        kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    return k


@pytest.mark.parametrize("operation", sorted(STATE_OPERATIONS))
def test_disabled_key(ctx, disabled, operation):
    with pytest.raises(ClientError) as exc:
        STATE_OPERATIONS[operation](ctx, disabled)
    assert error_code(exc) == "DisabledException"


@pytest.mark.parametrize("operation", sorted(STATE_OPERATIONS))
def test_key_pending_deletion(ctx, pending, operation):
    with pytest.raises(ClientError) as exc:
        STATE_OPERATIONS[operation](ctx, pending)
    assert error_code(exc) == "KMSInvalidStateException"


def test_state_changes_take_effect(ctx, kms):
    k = _state_keys(kms)
    sign_once = STATE_OPERATIONS["Sign"]
    kms.disable_key(KeyId=k.sign)
    kms.enable_key(KeyId=k.sign)
    sign_once(ctx, k)
    kms.schedule_key_deletion(KeyId=k.sign, PendingWindowInDays=7)
    kms.cancel_key_deletion(KeyId=k.sign)  # KMS leaves a cancelled key Disabled
    assert kms.describe_key(KeyId=k.sign)["KeyMetadata"]["KeyState"] == "Disabled"
    with pytest.raises(ClientError) as exc:
        sign_once(ctx, k)
    assert error_code(exc) == "DisabledException"


# -- DryRun: DryRunOperationException once every other check has passed --

DRY_RUN_OPERATIONS = {
    "Sign": lambda c: sign(c, P256, DryRun=True),
    "Verify-bad-signature": lambda c: c.kms.verify(
        KeyId=c.id(P256), Message=b"m", Signature=b"not a signature",
        SigningAlgorithm="ECDSA_SHA_256", DryRun=True),
    "Encrypt-RSA": lambda c: encrypt(c, RSA_E, EncryptionAlgorithm="RSAES_OAEP_SHA_1", DryRun=True),
    "Decrypt-RSA-garbage": lambda c: c.kms.decrypt(
        KeyId=c.id(RSA_E), CiphertextBlob=os.urandom(256), EncryptionAlgorithm="RSAES_OAEP_SHA_1",
        DryRun=True),
    "Encrypt": lambda c: encrypt(c, SYM, DryRun=True),
    "Decrypt": lambda c: c.kms.decrypt(CiphertextBlob=c.ciphertext, DryRun=True),
    "GenerateDataKey": lambda c: c.kms.generate_data_key(KeyId=c.id(SYM), NumberOfBytes=16,
                                                         DryRun=True),
    "GenerateMac": lambda c: c.kms.generate_mac(KeyId=c.id(HMAC), Message=b"m",
                                                MacAlgorithm="HMAC_SHA_256", DryRun=True),
}


@pytest.mark.parametrize("operation", sorted(DRY_RUN_OPERATIONS))
def test_dry_run(ctx, operation):
    with pytest.raises(ClientError) as exc:
        DRY_RUN_OPERATIONS[operation](ctx)
    assert error_code(exc) == "DryRunOperationException"


DRY_RUN_AFTER_CHECKS = {
    "unknown-key": (lambda c, d: sign(c, str(uuid.uuid4()), DryRun=True), "NotFoundException"),
    "disabled-key": (lambda c, d: c.kms.sign(KeyId=d.sign, Message=b"m", DryRun=True,
                                             SigningAlgorithm="RSASSA_PSS_SHA_256"),
                     "DisabledException"),
    "wrong-usage": (lambda c, d: sign(c, RSA_E, algorithm="RSASSA_PSS_SHA_256", DryRun=True),
                    "InvalidKeyUsageException"),
    "wrong-algorithm": (lambda c, d: sign(c, P256, algorithm="ECDSA_SHA_512", DryRun=True),
                        "InvalidKeyUsageException"),
    "bad-digest-length": (lambda c, d: sign(c, P256, os.urandom(20), MessageType="DIGEST",
                                            DryRun=True), "ValidationException"),
    "oaep-too-long": (lambda c, d: encrypt(c, RSA_E, os.urandom(191), DryRun=True,
                                           EncryptionAlgorithm="RSAES_OAEP_SHA_256"),
                      "ValidationException"),
}


@pytest.mark.parametrize("case", sorted(DRY_RUN_AFTER_CHECKS))
def test_dry_run_checks_first(ctx, disabled, case):
    call, expected = DRY_RUN_AFTER_CHECKS[case]
    with pytest.raises(ClientError) as exc:
        call(ctx, disabled)
    assert error_code(exc) == expected
