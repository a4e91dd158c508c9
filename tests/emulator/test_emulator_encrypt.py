"""RSA Encrypt/Decrypt are real RSAES-OAEP with KMS's limits; symmetric keys keep working."""

from __future__ import annotations

import os
import subprocess

import pytest
from botocore.exceptions import ClientError
from emulator_support import error_code

from pkcs11_kms.emulator.specs import KEY_SPECS

RSA_SPECS = [spec for spec, info in KEY_SPECS.items() if info.encryption]
# KMS's documented limits (API_Encrypt), independent of specs.py.
LIMITS = {("RSA_2048", "RSAES_OAEP_SHA_1"): 214, ("RSA_2048", "RSAES_OAEP_SHA_256"): 190,
          ("RSA_3072", "RSAES_OAEP_SHA_1"): 342, ("RSA_3072", "RSAES_OAEP_SHA_256"): 318,
          ("RSA_4096", "RSAES_OAEP_SHA_1"): 470, ("RSA_4096", "RSAES_OAEP_SHA_256"): 446}
OPENSSL_MD = {"RSAES_OAEP_SHA_1": "sha1", "RSAES_OAEP_SHA_256": "sha256"}


@pytest.mark.parametrize("spec,algorithm", sorted(LIMITS))
def test_round_trip_at_the_limit(kms, keys, spec, algorithm):
    key = keys[spec, "ENCRYPT_DECRYPT"]
    limit = LIMITS[spec, algorithm]
    plaintext = os.urandom(limit)
    out = kms.encrypt(KeyId=key.key_id, Plaintext=plaintext, EncryptionAlgorithm=algorithm)
    assert out["KeyId"] == key.arn and out["EncryptionAlgorithm"] == algorithm
    assert len(out["CiphertextBlob"]) == key.public_key.key_size // 8  # bare RSA ciphertext
    back = kms.decrypt(KeyId=key.key_id, CiphertextBlob=out["CiphertextBlob"],
                       EncryptionAlgorithm=algorithm)
    assert back["Plaintext"] == plaintext and back["KeyId"] == key.arn
    assert back["EncryptionAlgorithm"] == algorithm

    with pytest.raises(ClientError) as exc:
        kms.encrypt(KeyId=key.key_id, Plaintext=os.urandom(limit + 1),
                    EncryptionAlgorithm=algorithm)
    assert error_code(exc) == "ValidationException"


@pytest.mark.parametrize("spec", RSA_SPECS)
@pytest.mark.parametrize("algorithm", sorted(OPENSSL_MD))
def test_openssl_ciphertext_decrypts(kms, keys, openssl, tmp_path, spec, algorithm):
    """Ciphertext made outside KMS from GetPublicKey's key decrypts in KMS (envelope pattern)."""
    key = keys[spec, "ENCRYPT_DECRYPT"]
    (tmp_path / "pub.pem").write_bytes(key.public_pem)
    plaintext = os.urandom(LIMITS[spec, algorithm])
    (tmp_path / "pt").write_bytes(plaintext)
    result = subprocess.run(
        [openssl, "pkeyutl", "-encrypt", "-pubin", "-inkey", str(tmp_path / "pub.pem"),
         "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", f"rsa_oaep_md:{OPENSSL_MD[algorithm]}",
         "-in", str(tmp_path / "pt"), "-out", str(tmp_path / "ct")],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    ciphertext = (tmp_path / "ct").read_bytes()
    back = kms.decrypt(KeyId=key.key_id, CiphertextBlob=ciphertext, EncryptionAlgorithm=algorithm)
    assert back["Plaintext"] == plaintext
    other = "RSAES_OAEP_SHA_1" if algorithm == "RSAES_OAEP_SHA_256" else "RSAES_OAEP_SHA_256"
    with pytest.raises(ClientError) as exc:
        kms.decrypt(KeyId=key.key_id, CiphertextBlob=ciphertext, EncryptionAlgorithm=other)
    assert error_code(exc) == "InvalidCiphertextException"


def test_cryptography_ciphertext_decrypts(kms, keys):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key = keys["RSA_2048", "ENCRYPT_DECRYPT"]
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    ciphertext = key.public_key.encrypt(b"wrapped data key", oaep)
    assert kms.decrypt(KeyId=key.key_id, CiphertextBlob=ciphertext,
                       EncryptionAlgorithm="RSAES_OAEP_SHA_256")["Plaintext"] == b"wrapped data key"


@pytest.mark.parametrize("blob", [os.urandom(256), os.urandom(255), b"\x00" * 256])
def test_garbage_is_invalid_ciphertext(kms, keys, blob):
    key = keys["RSA_2048", "ENCRYPT_DECRYPT"]
    with pytest.raises(ClientError) as exc:
        kms.decrypt(KeyId=key.key_id, CiphertextBlob=blob, EncryptionAlgorithm="RSAES_OAEP_SHA_1")
    assert error_code(exc) == "InvalidCiphertextException"


def test_symmetric_keys_still_work(kms, keys):
    key = keys["SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"]
    out = kms.encrypt(KeyId=key.key_id, Plaintext=b"x" * 4096,
                      EncryptionContext={"purpose": "test"})
    assert out["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    back = kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext={"purpose": "test"})
    assert back["Plaintext"] == b"x" * 4096 and back["KeyId"] == key.arn
    with pytest.raises(ClientError) as exc:
        kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext={"purpose": "other"})
    assert error_code(exc) == "InvalidCiphertextException"
    data_key = kms.generate_data_key(KeyId=key.key_id, KeySpec="AES_256")
    assert kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"])["Plaintext"] == \
        data_key["Plaintext"]


def test_metadata(kms, keys):
    expectations = {
        ("RSA_2048", "ENCRYPT_DECRYPT"): ("EncryptionAlgorithms",
                                          ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]),
        ("ECC_NIST_EDWARDS25519", "SIGN_VERIFY"): ("SigningAlgorithms",
                                                   ["ED25519_SHA_512", "ED25519_PH_SHA_512"]),
        ("ML_DSA_87", "SIGN_VERIFY"): ("SigningAlgorithms", ["ML_DSA_SHAKE_256"]),
        ("ECC_NIST_P384", "SIGN_VERIFY"): ("SigningAlgorithms", ["ECDSA_SHA_384"]),
        ("ECC_NIST_P256", "KEY_AGREEMENT"): ("KeyAgreementAlgorithms", ["ECDH"]),
    }
    symmetric = {
        ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"): ("EncryptionAlgorithms", ["SYMMETRIC_DEFAULT"]),
        ("HMAC_256", "GENERATE_VERIFY_MAC"): ("MacAlgorithms", ["HMAC_SHA_256"]),
    }
    for (spec, usage), (field, value) in {**expectations, **symmetric}.items():
        key = keys[spec, usage]
        meta = kms.describe_key(KeyId=key.key_id)["KeyMetadata"]
        assert meta["KeySpec"] == spec and meta["KeyUsage"] == usage
        assert meta["KeyState"] == "Enabled" and meta["Arn"] == key.arn
        assert meta[field] == value
        assert [f for f in meta if f.endswith("Algorithms")] == [field]
        if (spec, usage) in symmetric:
            continue
        public = kms.get_public_key(KeyId=key.key_id)
        assert public["KeyId"] == key.arn and public[field] == value
        assert public["KeySpec"] == spec and public["KeyUsage"] == usage


def test_generate_random(kms):
    for size in (1, 32, 1024):
        assert len(kms.generate_random(NumberOfBytes=size)["Plaintext"]) == size
