"""The emulator's tables against the KMS documentation, and its Ed25519ph against RFC 8032."""

from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import os
import re
from pathlib import Path

import botocore
import moto
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from moto.kms import models as moto_models
from moto.kms.models import KmsBackend
from moto.kms.responses import KmsResponse

from pkcs11_kms.emulator import crypto, ed25519ph
from pkcs11_kms.emulator.kms import MOTO_VERSION
from pkcs11_kms.emulator.specs import (
    DIGEST, ENCRYPTION_ALGORITHMS, EXTERNAL_MU, KEY_SPECS, RAW, SIGNING_ALGORITHMS,
)

# What the KMS documentation says, written out independently of the emulator's tables.
DOCUMENTED_OAEP_LIMITS = {  # API_Encrypt: "RSA_2048 RSAES_OAEP_SHA_1: 214 bytes" ...
    ("RSA_2048", "RSAES_OAEP_SHA_1"): 214, ("RSA_2048", "RSAES_OAEP_SHA_256"): 190,
    ("RSA_3072", "RSAES_OAEP_SHA_1"): 342, ("RSA_3072", "RSAES_OAEP_SHA_256"): 318,
    ("RSA_4096", "RSAES_OAEP_SHA_1"): 470, ("RSA_4096", "RSAES_OAEP_SHA_256"): 446,
}
DOCUMENTED_ECDSA = {  # key spec -> (curve, the one signing algorithm KMS allows)
    "ECC_NIST_P256": (ec.SECP256R1, "ECDSA_SHA_256"),
    "ECC_SECG_P256K1": (ec.SECP256K1, "ECDSA_SHA_256"),
    "ECC_NIST_P384": (ec.SECP384R1, "ECDSA_SHA_384"),
    "ECC_NIST_P521": (ec.SECP521R1, "ECDSA_SHA_512"),
}
DOCUMENTED_MESSAGE_TYPES = {
    "ED25519_SHA_512": {RAW}, "ED25519_PH_SHA_512": {DIGEST},
    "ML_DSA_SHAKE_256": {RAW, EXTERNAL_MU},
}
HASH_BY_SUFFIX = {"SHA_256": 32, "SHA_384": 48, "SHA_512": 64}


def _kms_model() -> dict:
    path = Path(botocore.__file__).parent / "data" / "kms" / "2014-11-01" / "service-2.json.gz"
    return json.loads(gzip.decompress(path.read_bytes()))


def test_names_are_kms_names():
    shapes = _kms_model()["shapes"]
    assert set(KEY_SPECS) <= set(shapes["KeySpec"]["enum"])
    assert set(SIGNING_ALGORITHMS) <= set(shapes["SigningAlgorithmSpec"]["enum"])
    assert set(ENCRYPTION_ALGORITHMS) <= set(shapes["EncryptionAlgorithmSpec"]["enum"])
    assert {"ECC_NIST_EDWARDS25519", "ML_DSA_44", "ML_DSA_65", "ML_DSA_87"} <= set(KEY_SPECS)


@pytest.mark.parametrize("spec,algorithm", sorted(DOCUMENTED_OAEP_LIMITS))
def test_oaep_limits(spec, algorithm):
    limit = KEY_SPECS[spec].oaep_limits[algorithm]
    assert limit == DOCUMENTED_OAEP_LIMITS[spec, algorithm]
    hash_len = ENCRYPTION_ALGORITHMS[algorithm].digest_size
    assert limit == KEY_SPECS[spec].params // 8 - 2 * hash_len - 2  # RFC 8017 7.1.1


@pytest.mark.parametrize("spec", sorted(DOCUMENTED_ECDSA))
def test_ecdsa_curve_and_hash(spec):
    curve, algorithm = DOCUMENTED_ECDSA[spec]
    assert KEY_SPECS[spec].params is curve
    assert KEY_SPECS[spec].signing == (algorithm,)


@pytest.mark.parametrize("algorithm", sorted(SIGNING_ALGORITHMS))
def test_signing_table(algorithm):
    info = SIGNING_ALGORITHMS[algorithm]
    assert info.scheme in crypto.SCHEMES
    expected_types = DOCUMENTED_MESSAGE_TYPES.get(algorithm, {RAW, DIGEST})
    assert set(info.message_types) == expected_types
    for suffix, size in HASH_BY_SUFFIX.items():
        if algorithm.endswith(suffix):
            assert info.hash.digest_size == size
            if DIGEST in info.message_types:
                assert info.message_types[DIGEST] == size
    assert info.message_types.get(RAW) is None
    if EXTERNAL_MU in info.message_types:
        assert info.message_types[EXTERNAL_MU] == 64


def test_every_key_spec_is_served():
    for name, spec in KEY_SPECS.items():
        assert spec.family in crypto.GENERATORS, name
        assert set(spec.signing) <= set(SIGNING_ALGORITHMS), name
        assert set(spec.encryption) == set(spec.oaep_limits), name


def test_ml_dsa_available():
    """cryptography 50 with OpenSSL 3.5+ has ML-DSA (FIPS 204) including sign_mu/verify_mu."""
    assert crypto.ML_DSA_AVAILABLE


# RFC 8032 section 7.3, the Ed25519ph test vector ("abc").
RFC8032_PH = {
    "seed": "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
    "public": "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
    "message": "616263",
    "signature": "98a70222f0b8121aa9d30f813d683f809e462b469c7ff87639499bb94e6dae41"
                 "31f85042463c2a355a2003d062adf5aaa10b8c61e636062aaad11c2a26083406",
}


def test_ed25519ph_rfc8032_vector():
    seed, public, message, signature = (bytes.fromhex(RFC8032_PH[k]) for k in
                                        ("seed", "public", "message", "signature"))
    assert ed25519ph.public_key(seed) == public
    assert ed25519ph.sign(seed, message) == signature
    assert ed25519ph.verify(public, message, signature)
    assert not ed25519ph.verify(public, message + b"!", signature)
    assert not ed25519ph.verify(public, message, signature[:32] + bytes(32))


@pytest.mark.parametrize("size", [0, 1, 64, 1000])
def test_ed25519_arithmetic_matches_cryptography(size):
    """The same curve arithmetic, in pure (no prehash) mode, reproduces cryptography's Ed25519."""
    key = ed25519.Ed25519PrivateKey.generate()
    message = os.urandom(size)
    public = key.public_key().public_bytes_raw()
    assert ed25519ph.public_key(key.private_bytes_raw()) == public
    assert ed25519ph.sign(key.private_bytes_raw(), message, pure=True) == key.sign(message)
    assert ed25519ph.verify(public, message, key.sign(message), pure=True)
    assert not ed25519ph.verify(public, message, key.sign(message))  # ph differs from pure


def test_moto_is_the_pinned_version():
    """The overrides are written against this moto; an upgrade must be reviewed, not absorbed."""
    assert moto.__version__ == MOTO_VERSION
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    assert re.search(rf"moto\[server\]=={re.escape(MOTO_VERSION)}\"", pyproject.read_text())


def test_moto_override_points_exist():
    for name in ("sign", "verify", "encrypt", "decrypt", "get_public_key", "generate_random",
                 "generate_data_key", "re_encrypt", "generate_mac", "verify_mac",
                 "_validate_key_id", "_get_param"):
        assert callable(getattr(KmsResponse, name)), name
    assert list(inspect.signature(KmsBackend.create_key).parameters) == [
        "self", "policy", "key_usage", "key_spec", "description", "tags", "multi_region",
        "origin"]
    assert callable(moto_models.generate_private_key)
    assert "generate_private_key(self.key_spec)" in inspect.getsource(moto_models.Key.__init__)


def test_fips204_mu_matches_cryptography():
    """EXTERNAL_MU as the suite computes it (FIPS 204 6.2, empty context) is cryptography's mu."""
    from cryptography.hazmat.primitives.asymmetric import mldsa

    key = mldsa.MLDSA44PrivateKey.generate()
    hasher = mldsa.MLDSAMuHasher(key.public_key())
    hasher.update(b"message")
    tr = hashlib.shake_256(key.public_key().public_bytes_raw()).digest(64)
    assert hasher.finalize() == hashlib.shake_256(tr + b"\x00\x00" + b"message").digest(64)
