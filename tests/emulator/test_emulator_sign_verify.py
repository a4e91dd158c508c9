"""Sign and Verify, every key spec x algorithm x message type, checked by independent verifiers."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from emulator_support import error_code

from pkcs11_kms.emulator import ed25519ph
from pkcs11_kms.emulator.specs import KEY_SPECS, SIGNING_ALGORITHMS

# The verifier's own view of each algorithm, written from the KMS docs, not from specs.py.
HASHES = {"SHA_256": hashes.SHA256, "SHA_384": hashes.SHA384, "SHA_512": hashes.SHA512}
ML_DSA_SIGNATURE_SIZE = {"ML_DSA_44": 2420, "ML_DSA_65": 3309, "ML_DSA_87": 4627}

CASES = [(spec, algorithm, message_type)
         for spec, info in KEY_SPECS.items()
         for algorithm in info.signing
         for message_type in SIGNING_ALGORITHMS[algorithm].message_types]


def _hash(algorithm: str) -> type[hashes.HashAlgorithm]:
    return HASHES[algorithm[-7:]]


def fips204_mu(public_key, message: bytes) -> bytes:
    """mu = SHAKE256(SHAKE256(pk, 64) || 0 || len(ctx)=0 || M, 64), FIPS 204 Algorithm 2/7."""
    tr = hashlib.shake_256(public_key.public_bytes_raw()).digest(64)
    return hashlib.shake_256(tr + b"\x00\x00" + message).digest(64)


def message_for(key, algorithm: str, message_type: str, original: bytes) -> bytes:
    """What the caller sends KMS for ``original``: itself, its digest or its ML-DSA mu."""
    if message_type == "DIGEST":
        return hashlib.new(_hash(algorithm).name, original).digest()
    if message_type == "EXTERNAL_MU":
        return fips204_mu(key.public_key, original)
    return original


def independent_verify(key, algorithm: str, message_type: str, original: bytes, sent: bytes,
                       signature: bytes) -> None:
    """Raise InvalidSignature unless ``signature`` is what a standard verifier accepts.

    A DIGEST signature must verify over the *original* message hashed once; an EXTERNAL_MU
    signature must be a plain ML-DSA signature of the original message."""
    public = key.public_key
    if algorithm.startswith(("RSASSA_", "ECDSA_")):
        h = _hash(algorithm)
        if algorithm.startswith("RSASSA_PSS"):
            pad = padding.PSS(mgf=padding.MGF1(h()), salt_length=h.digest_size)
            public.verify(signature, original, pad, h())
        elif algorithm.startswith("RSASSA_PKCS1"):
            public.verify(signature, original, padding.PKCS1v15(), h())
        else:
            r, s = utils.decode_dss_signature(signature)
            assert utils.encode_dss_signature(r, s) == signature  # strict DER
            public.verify(signature, original, ec.ECDSA(h()))
    elif algorithm == "ED25519_SHA_512":
        public.verify(signature, original)
    elif algorithm == "ED25519_PH_SHA_512":
        # cryptography has no Ed25519ph; ed25519ph is checked against RFC 8032 in test_emulator_specs.
        # KMS prehashes the DIGEST it is given once more: the signed message is the digest.
        if not ed25519ph.verify(public.public_bytes_raw(), sent, signature):
            raise InvalidSignature()
    elif algorithm == "ML_DSA_SHAKE_256":
        assert len(signature) == ML_DSA_SIGNATURE_SIZE[key.spec]
        public.verify(signature, original)
    else:  # pragma: no cover
        raise AssertionError(f"no independent verifier for {algorithm}")


@pytest.mark.parametrize("spec,algorithm,message_type", CASES)
def test_sign_verifies_independently(kms, keys, spec, algorithm, message_type):
    key = keys[spec, "SIGN_VERIFY"]
    original = os.urandom(200)
    sent = message_for(key, algorithm, message_type, original)
    response = kms.sign(KeyId=key.key_id, Message=sent, MessageType=message_type,
                        SigningAlgorithm=algorithm)
    assert response["KeyId"] == key.arn
    assert response["SigningAlgorithm"] == algorithm
    signature = response["Signature"]
    independent_verify(key, algorithm, message_type, original, sent, signature)

    verified = kms.verify(KeyId=key.key_id, Message=sent, MessageType=message_type,
                          Signature=signature, SigningAlgorithm=algorithm)
    assert verified["SignatureValid"] is True and verified["KeyId"] == key.arn

    tampered = bytes([sent[0] ^ 1]) + sent[1:]
    with pytest.raises(ClientError) as exc:
        kms.verify(KeyId=key.key_id, Message=tampered, MessageType=message_type,
                   Signature=signature, SigningAlgorithm=algorithm)
    assert error_code(exc) == "KMSInvalidSignatureException"


@pytest.mark.parametrize("spec,algorithm", [(s, a) for s, a, t in CASES if t == "DIGEST"
                                            and a != "ED25519_PH_SHA_512"])
def test_raw_signature_verifies_as_digest(kms, keys, spec, algorithm):
    """Verify may use another message type than Sign did: RAW message == its digest."""
    key = keys[spec, "SIGN_VERIFY"]
    message = b"the same message, hashed once"
    signature = kms.sign(KeyId=key.key_id, Message=message, MessageType="RAW",
                         SigningAlgorithm=algorithm)["Signature"]
    digest = hashlib.new(_hash(algorithm).name, message).digest()
    assert kms.verify(KeyId=key.key_id, Message=digest, MessageType="DIGEST",
                      Signature=signature, SigningAlgorithm=algorithm)["SignatureValid"]


def pss_salt_length(public_key, signature: bytes, h: type[hashes.HashAlgorithm]) -> int:
    """Open a PSS signature with the public key (RFC 8017 9.1.2) and measure its salt."""
    numbers = public_key.public_numbers()
    em_bits = public_key.key_size - 1
    em_len = (em_bits + 7) // 8
    em = pow(int.from_bytes(signature, "big"), numbers.e, numbers.n).to_bytes(em_len, "big")
    assert em[-1] == 0xBC
    masked_db, digest = em[:em_len - h.digest_size - 1], em[em_len - h.digest_size - 1:-1]
    mask, counter = b"", 0
    while len(mask) < len(masked_db):  # MGF1 with the same hash
        mask += hashlib.new(h.name, digest + counter.to_bytes(4, "big")).digest()
        counter += 1
    db = bytearray(a ^ b for a, b in zip(masked_db, mask))
    db[0] &= 0xFF >> (8 * em_len - em_bits)
    separator = db.index(1)
    assert not any(db[:separator])
    return len(db) - separator - 1


@pytest.mark.parametrize("spec", ["RSA_2048", "RSA_3072", "RSA_4096"])
@pytest.mark.parametrize("algorithm", ["RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384",
                                       "RSASSA_PSS_SHA_512"])
def test_pss_salt_is_hash_length(kms, keys, spec, algorithm):
    key = keys[spec, "SIGN_VERIFY"]
    h = _hash(algorithm)
    signature = kms.sign(KeyId=key.key_id, Message=b"salt", SigningAlgorithm=algorithm)["Signature"]
    assert pss_salt_length(key.public_key, signature, h) == h.digest_size
    exact = padding.PSS(mgf=padding.MGF1(h()), salt_length=h.digest_size)
    key.public_key.verify(signature, b"salt", exact, h())
    longest = key.public_key.key_size // 8 - h.digest_size - 2  # moto's old choice
    with pytest.raises(InvalidSignature):
        key.public_key.verify(signature, b"salt", padding.PSS(padding.MGF1(h()), longest), h())


@pytest.mark.parametrize("spec", ["ML_DSA_44", "ML_DSA_65", "ML_DSA_87"])
def test_ml_dsa_external_mu_matches_raw(kms, keys, spec):
    """A RAW signature verifies through KMS as EXTERNAL_MU of the same message, and back."""
    key = keys[spec, "SIGN_VERIFY"]
    message = b"ML-DSA message"
    mu = fips204_mu(key.public_key, message)
    raw_sig = kms.sign(KeyId=key.key_id, Message=message, SigningAlgorithm="ML_DSA_SHAKE_256")
    assert kms.verify(KeyId=key.key_id, Message=mu, MessageType="EXTERNAL_MU",
                      Signature=raw_sig["Signature"], SigningAlgorithm="ML_DSA_SHAKE_256")
    key.public_key.verify_mu(raw_sig["Signature"], mu)


def test_key_identifiers(kms, keys):
    """Key ID, key ARN, alias name and alias ARN all name the key; KeyId answers the key ARN."""
    key = keys["ECC_NIST_P384", "SIGN_VERIFY"]
    kms.create_alias(AliasName="alias/emulator-p384", TargetKeyId=key.key_id)
    alias_arn = key.arn.split(":key/")[0] + ":alias/emulator-p384"
    for identifier in (key.key_id, key.arn, "alias/emulator-p384", alias_arn):
        response = kms.sign(KeyId=identifier, Message=b"m", SigningAlgorithm="ECDSA_SHA_384")
        assert response["KeyId"] == key.arn
        key.public_key.verify(response["Signature"], b"m", ec.ECDSA(hashes.SHA384()))


def test_raw_message_limit(kms, keys):
    key = keys["ECC_NIST_P256", "SIGN_VERIFY"]
    message = os.urandom(4096)
    signature = kms.sign(KeyId=key.key_id, Message=message, SigningAlgorithm="ECDSA_SHA_256")
    key.public_key.verify(signature["Signature"], message, ec.ECDSA(hashes.SHA256()))


# -- the openssl binary as a second, unrelated verifier --

def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


OPENSSL_CASES = [
    # (key spec, algorithm, message type, how openssl verifies)
    ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256", "RAW", "dgst"),
    ("RSA_3072", "RSASSA_PKCS1_V1_5_SHA_384", "DIGEST", "pkeyutl"),
    ("RSA_4096", "RSASSA_PSS_SHA_512", "RAW", "dgst"),
    ("RSA_2048", "RSASSA_PSS_SHA_256", "DIGEST", "pkeyutl"),
    ("ECC_NIST_P256", "ECDSA_SHA_256", "DIGEST", "pkeyutl"),
    ("ECC_SECG_P256K1", "ECDSA_SHA_256", "RAW", "dgst"),
    ("ECC_NIST_P384", "ECDSA_SHA_384", "DIGEST", "pkeyutl"),
    ("ECC_NIST_P521", "ECDSA_SHA_512", "RAW", "dgst"),
    ("ECC_NIST_EDWARDS25519", "ED25519_SHA_512", "RAW", "rawin"),
]


@pytest.mark.parametrize("spec,algorithm,message_type,tool", OPENSSL_CASES)
def test_openssl_verifies(kms, keys, openssl, tmp_path, spec, algorithm, message_type, tool):
    key = keys[spec, "SIGN_VERIFY"]
    original = os.urandom(300)
    sent = message_for(key, algorithm, message_type, original)
    signature = kms.sign(KeyId=key.key_id, Message=sent, MessageType=message_type,
                         SigningAlgorithm=algorithm)["Signature"]
    (tmp_path / "pub.pem").write_bytes(key.public_pem)
    (tmp_path / "msg").write_bytes(original)
    (tmp_path / "sent").write_bytes(sent)
    (tmp_path / "sig").write_bytes(signature)
    pub, sig = str(tmp_path / "pub.pem"), str(tmp_path / "sig")
    opts: list[str] = []
    if algorithm.startswith("RSASSA_PSS"):
        opts = ["rsa_padding_mode:pss", f"rsa_pss_saltlen:{_hash(algorithm).digest_size}"]
    if tool == "dgst":
        md = "-" + _hash(algorithm).name
        sigopts = [x for o in opts for x in ("-sigopt", o)]
        result = _run(openssl, "dgst", md, "-verify", pub, *sigopts, "-signature", sig,
                      str(tmp_path / "msg"))
    elif tool == "pkeyutl":  # verifies the digest KMS was given, with the hash named
        pkeyopts = [x for o in [f"digest:{_hash(algorithm).name}", *opts]
                    for x in ("-pkeyopt", o)]
        result = _run(openssl, "pkeyutl", "-verify", "-pubin", "-inkey", pub, *pkeyopts,
                      "-in", str(tmp_path / "sent"), "-sigfile", sig)
    else:  # Ed25519 verifies the message itself
        result = _run(openssl, "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin",
                      "-in", str(tmp_path / "msg"), "-sigfile", sig)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verified OK" in result.stdout or "Signature Verified Successfully" in result.stdout
