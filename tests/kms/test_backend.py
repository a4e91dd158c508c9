"""The KmsBackend contract on every target: the emulator, plain moto (not for Sign or Decrypt: see
EXACT_TARGETS). Every signature is checked by `cryptography`, not by the target."""

from __future__ import annotations

import hashlib
import inspect
import uuid

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from pkcs11_kms.ck import CKR
from pkcs11_kms.core.kms_errors import rv_for
from pkcs11_kms.kms import Alias, AwsKms, KmsBackend, KmsError
from pkcs11_kms.kms.specs import KEY_SPECS

from .kmstest import unique_alias

RSA_SIGNING = (
    "RSASSA_PKCS1_V1_5_SHA_256",
    "RSASSA_PKCS1_V1_5_SHA_384",
    "RSASSA_PKCS1_V1_5_SHA_512",
    "RSASSA_PSS_SHA_256",
    "RSASSA_PSS_SHA_384",
    "RSASSA_PSS_SHA_512",
)
SPECS = {  # key spec -> (key type, size or curve, signing algorithms)
    "RSA_2048": (rsa.RSAPublicKey, 2048, RSA_SIGNING),
    "RSA_3072": (rsa.RSAPublicKey, 3072, RSA_SIGNING),
    "RSA_4096": (rsa.RSAPublicKey, 4096, RSA_SIGNING),
    "ECC_NIST_P256": (ec.EllipticCurvePublicKey, "secp256r1", ("ECDSA_SHA_256",)),
    "ECC_NIST_P384": (ec.EllipticCurvePublicKey, "secp384r1", ("ECDSA_SHA_384",)),
    "ECC_NIST_P521": (ec.EllipticCurvePublicKey, "secp521r1", ("ECDSA_SHA_512",)),
    "ECC_SECG_P256K1": (ec.EllipticCurvePublicKey, "secp256k1", ("ECDSA_SHA_256",)),
}
HASHES = {"SHA_1": hashes.SHA1, "SHA_256": hashes.SHA256, "SHA_384": hashes.SHA384,
          "SHA_512": hashes.SHA512}  # fmt: skip
MISSING = "11111111-2222-3333-4444-555555555555"


def hash_of(algorithm: str) -> hashes.HashAlgorithm:
    return HASHES[algorithm[algorithm.rindex("SHA_") :]]()


def digest(algorithm: str, data: bytes = b"to be signed") -> bytes:
    return hashlib.new(hash_of(algorithm).name, data).digest()


def independent_verify(der: bytes, algorithm: str, data: bytes, signature: bytes) -> None:
    """Raises InvalidSignature unless `signature` is a KMS signature of `data`'s digest."""
    public = serialization.load_der_public_key(der)
    hash_ = hash_of(algorithm)
    pre = utils.Prehashed(hash_)
    d = hashlib.new(hash_.name, data).digest()
    if isinstance(public, ec.EllipticCurvePublicKey):
        utils.decode_dss_signature(signature)  # DER, as KMS returns
        public.verify(signature, d, ec.ECDSA(pre))
    elif algorithm.startswith("RSASSA_PSS_"):  # salt length exactly the hash length
        public.verify(signature, d, padding.PSS(padding.MGF1(hash_), hash_.digest_size), pre)
    else:
        public.verify(signature, d, padding.PKCS1v15(), pre)


def expect_error(code: str, rv: CKR, call, *args):
    with pytest.raises(KmsError) as caught:
        call(*args)
    assert (caught.value.code, rv_for(caught.value)) == (code, rv)
    return caught.value


@pytest.mark.parametrize("name", [n for n in dir(KmsBackend) if not n.startswith("_")])
def test_aws_kms_implements_the_protocol(name):
    expected = inspect.signature(getattr(KmsBackend, name))
    assert list(inspect.signature(getattr(AwsKms, name)).parameters) == list(expected.parameters)


# -- keys, aliases, tags, listing, public keys, random: every target -----------------------


def test_describe_key_by_every_identifier(target):
    alias = unique_alias()
    meta = target.create_key("ECC_NIST_P256", "SIGN_VERIFY", alias=alias)
    region_account = meta.arn.split(":key/")[0]
    for key in (meta.key_id, meta.arn, alias, f"{region_account}:{alias}"):
        described = target.backend.describe_key(key)
        assert (described.key_id, described.arn) == (meta.key_id, meta.arn), key
        assert (described.key_spec, described.key_usage) == ("ECC_NIST_P256", "SIGN_VERIFY")
        assert described.key_state == "Enabled"


@pytest.mark.parametrize("spec", SPECS)
def test_get_public_key_of_signing_keys(target, spec):
    key_type, size, algorithms = SPECS[spec]
    meta = target.shared_key(spec, "SIGN_VERIFY")
    public = target.backend.get_public_key(meta.arn)
    loaded = serialization.load_der_public_key(public.der)
    assert isinstance(loaded, key_type)
    assert (loaded.key_size if key_type is rsa.RSAPublicKey else loaded.curve.name) == size
    assert (public.key_id, public.key_spec, public.key_usage) == (meta.key_id, spec, "SIGN_VERIFY")
    assert public.arn == meta.arn
    # KMS lists the algorithms of the key spec: kms/specs.py's table is their one home.
    answer = target.backend._call("GetPublicKey", meta.arn, KeyId=meta.arn)  # KMS's own words
    assert tuple(answer["SigningAlgorithms"]) == algorithms == KEY_SPECS[spec].signing_algorithms
    assert "EncryptionAlgorithms" not in answer


def test_get_public_key_of_decryption_key(target):
    meta = target.shared_key("RSA_3072", "ENCRYPT_DECRYPT")
    public = target.backend.get_public_key(meta.key_id)
    answer = target.backend._call("GetPublicKey", meta.arn, KeyId=meta.arn)  # KMS's own words
    assert tuple(answer["EncryptionAlgorithms"]) == ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256") \
        == KEY_SPECS["RSA_3072"].encryption_algorithms
    assert "SigningAlgorithms" not in answer
    assert serialization.load_der_public_key(public.der).key_size == 3072


def test_list_keys_and_aliases(target):
    alias = unique_alias()
    a = target.create_key("ECC_NIST_P256", "SIGN_VERIFY", alias=alias)
    b = target.create_key("RSA_2048", "ENCRYPT_DECRYPT")
    assert {a.key_id, b.key_id} <= set(target.backend.list_keys())
    region_account = a.arn.split(":key/")[0]
    assert Alias(alias, f"{region_account}:{alias}", a.key_id) in target.backend.list_aliases()


def test_list_resource_tags(target):
    tags = {"pkcs11:label": "web", "x": ""}
    tagged = target.create_key("ECC_NIST_P384", "SIGN_VERIFY", tags=tags)
    bare = target.create_key("ECC_NIST_P384", "SIGN_VERIFY")
    assert target.backend.list_resource_tags(tagged.key_id) == {"pkcs11:label": "web", "x": ""}
    assert target.backend.list_resource_tags(tagged.arn) == {"pkcs11:label": "web", "x": ""}
    assert target.backend.list_resource_tags(bare.key_id) == {}


@pytest.mark.parametrize("length", [1, 32, 1024])
def test_generate_random(target, length):
    first, second = target.backend.generate_random(length), target.backend.generate_random(length)
    assert len(first) == len(second) == length
    assert length == 1 or first != second


@pytest.mark.parametrize("length", [0, 1025])
def test_generate_random_out_of_range(target, length):
    expect_error("ValidationException", CKR.DATA_LEN_RANGE, target.backend.generate_random, length)


@pytest.mark.parametrize(
    "key",
    [MISSING, f"arn:aws:kms:eu-west-1:123456789012:key/{MISSING}", "alias/no-such-alias"],
)
@pytest.mark.parametrize("operation", ["describe_key", "get_public_key"])
def test_missing_key_is_not_found(target, operation, key):
    error = expect_error(
        "NotFoundException", CKR.KEY_HANDLE_INVALID, getattr(target.backend, operation), key
    )
    assert error.key == key
    assert error.operation == {"describe_key": "DescribeKey"}.get(operation, "GetPublicKey")


def test_list_resource_tags_takes_no_alias(target):
    alias = unique_alias()
    target.create_key("ECC_NIST_P256", "SIGN_VERIFY", alias=alias)
    list_tags = target.backend.list_resource_tags
    expect_error("NotFoundException", CKR.KEY_HANDLE_INVALID, list_tags, alias)


def test_describe_key_reports_states(target):
    disabled = target.create_key("ECC_NIST_P256", "SIGN_VERIFY")
    target.set_state(disabled.key_id, "Disabled")
    doomed = target.create_key("ECC_NIST_P256", "SIGN_VERIFY")
    target.set_state(doomed.key_id, "PendingDeletion")
    assert target.backend.describe_key(disabled.arn).key_state == "Disabled"
    assert target.backend.describe_key(doomed.arn).key_state == "PendingDeletion"


# -- AWS KMS's own semantics: the emulator has them, plain moto does not -------------------------

SIGN_CASES = [
    (spec, alg) for spec, (_, _, algs) in SPECS.items() if spec != "RSA_4096" for alg in algs
]


@pytest.mark.exact_kms
@pytest.mark.parametrize("spec,algorithm", SIGN_CASES)
def test_sign_digest_and_raw_verify_independently(target, spec, algorithm):
    meta = target.shared_key(spec, "SIGN_VERIFY")
    der = target.backend.get_public_key(meta.key_id).der
    data = b"the quick brown fox"
    by_digest = target.backend.sign(meta.key_id, digest(algorithm, data), "DIGEST", algorithm)
    by_raw = target.backend.sign(meta.arn, data, "RAW", algorithm)
    for signature in (by_digest, by_raw):
        independent_verify(der, algorithm, data, signature)
        assert target.backend.verify(meta.key_id, data, "RAW", signature, algorithm) is True
        assert target.backend.verify(meta.key_id, digest(algorithm, data), "DIGEST", signature,
                                     algorithm) is True  # fmt: skip
    tampered = bytearray(by_digest)
    tampered[len(tampered) // 2] ^= 1
    assert target.backend.verify(meta.key_id, data, "RAW", bytes(tampered), algorithm) is False
    with pytest.raises(InvalidSignature):
        independent_verify(der, algorithm, b"other data", by_digest)


@pytest.mark.exact_kms
def test_rsa_4096_pss(target):
    meta = target.shared_key("RSA_4096", "SIGN_VERIFY")
    der = target.backend.get_public_key(meta.key_id).der
    signature = target.backend.sign(meta.key_id, digest("RSASSA_PSS_SHA_512"), "DIGEST",
                                    "RSASSA_PSS_SHA_512")  # fmt: skip
    assert len(signature) == 512
    independent_verify(der, "RSASSA_PSS_SHA_512", b"to be signed", signature)


@pytest.mark.exact_kms
@pytest.mark.parametrize(
    "spec,algorithm,length",
    [("ECC_NIST_P256", "ECDSA_SHA_256", 20), ("ECC_NIST_P256", "ECDSA_SHA_256", 48),
     ("RSA_2048", "RSASSA_PSS_SHA_384", 32), ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256", 51)],
)  # fmt: skip
def test_digest_must_be_the_hash_length(target, spec, algorithm, length):
    meta = target.shared_key(spec, "SIGN_VERIFY")
    expect_error("ValidationException", CKR.DATA_LEN_RANGE, target.backend.sign, meta.key_id,
                 bytes(length), "DIGEST", algorithm)  # fmt: skip


@pytest.mark.exact_kms
def test_raw_message_at_most_4096_bytes(target):
    meta = target.shared_key("ECC_NIST_P256", "SIGN_VERIFY")
    sign = target.backend.sign
    independent_verify(
        target.backend.get_public_key(meta.key_id).der, "ECDSA_SHA_256", bytes(4096),
        sign(meta.key_id, bytes(4096), "RAW", "ECDSA_SHA_256"),
    )  # fmt: skip
    expect_error("ValidationException", CKR.DATA_LEN_RANGE, sign, meta.key_id, bytes(4097), "RAW",
                 "ECDSA_SHA_256")  # fmt: skip


@pytest.mark.exact_kms
@pytest.mark.parametrize(
    "spec,usage,algorithm",
    [("ECC_NIST_P256", "SIGN_VERIFY", "ECDSA_SHA_384"),  # KMS fixes one hash per curve
     ("ECC_NIST_P384", "SIGN_VERIFY", "RSASSA_PSS_SHA_384"),
     ("RSA_2048", "ENCRYPT_DECRYPT", "RSASSA_PSS_SHA_256")],  # wrong key usage
)  # fmt: skip
def test_sign_refuses_what_the_key_cannot_do(target, spec, usage, algorithm):
    meta = target.shared_key(spec, usage)
    expect_error("InvalidKeyUsageException", CKR.KEY_FUNCTION_NOT_PERMITTED, target.backend.sign,
                 meta.key_id, bytes(32), "DIGEST", algorithm)  # fmt: skip


@pytest.mark.exact_kms
@pytest.mark.parametrize("algorithm", ["RSASSA_PSS_SHA_1", "RSASSA_PKCS1_V1_5_SHA_224", "RSA_RAW"])
def test_sign_refuses_algorithms_kms_does_not_have(target, algorithm):
    meta = target.shared_key("RSA_2048", "SIGN_VERIFY")
    expect_error("ValidationException", CKR.DATA_LEN_RANGE, target.backend.sign, meta.key_id,
                 bytes(32), "DIGEST", algorithm)  # fmt: skip


@pytest.mark.exact_kms
@pytest.mark.parametrize(
    "state,code",
    [("Disabled", "DisabledException"), ("PendingDeletion", "KMSInvalidStateException")],
)
def test_unusable_keys_neither_sign_nor_give_public_keys(target, state, code):
    meta = target.create_key("ECC_NIST_P256", "SIGN_VERIFY")
    target.set_state(meta.key_id, state)
    rv = CKR.KEY_FUNCTION_NOT_PERMITTED
    expect_error(code, rv, target.backend.sign, meta.key_id, bytes(32), "DIGEST", "ECDSA_SHA_256")
    expect_error(code, rv, target.backend.get_public_key, meta.key_id)


@pytest.mark.exact_kms
def test_symmetric_key_has_no_public_key(target):
    meta = target.shared_key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")
    expect_error("UnsupportedOperationException", CKR.FUNCTION_NOT_SUPPORTED,
                 target.backend.get_public_key, meta.key_id)  # fmt: skip


@pytest.mark.exact_kms
@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"])
def test_decrypt_oaep_made_with_the_public_key(target, algorithm):
    meta = target.shared_key("RSA_2048", "ENCRYPT_DECRYPT")
    public = serialization.load_der_public_key(target.backend.get_public_key(meta.key_id).der)
    hash_ = hash_of(algorithm)
    secret = uuid.uuid4().bytes
    ciphertext = public.encrypt(secret, padding.OAEP(padding.MGF1(hash_), hash_, None))
    assert target.backend.decrypt(meta.key_id, ciphertext, algorithm) == secret
    assert target.backend.decrypt(meta.key_id, target.backend.encrypt(meta.arn, secret, algorithm),
                                  algorithm) == secret  # fmt: skip
    other = "RSAES_OAEP_SHA_256" if algorithm == "RSAES_OAEP_SHA_1" else "RSAES_OAEP_SHA_1"
    expect_error("InvalidCiphertextException", CKR.ENCRYPTED_DATA_INVALID, target.backend.decrypt,
                 meta.key_id, ciphertext, other)  # fmt: skip
    expect_error("InvalidCiphertextException", CKR.ENCRYPTED_DATA_INVALID, target.backend.decrypt,
                 meta.key_id, bytes(256), algorithm)  # fmt: skip


@pytest.mark.exact_kms
def test_decrypt_refuses_signing_keys(target):
    meta = target.shared_key("RSA_2048", "SIGN_VERIFY")
    expect_error("InvalidKeyUsageException", CKR.KEY_FUNCTION_NOT_PERMITTED, target.backend.decrypt,
                 meta.key_id, bytes(256), "RSAES_OAEP_SHA_256")  # fmt: skip
