"""The tables the emulator follows: KMS key specs and signing/encryption algorithms."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

# The AWS KMS API reference is the source of every value below (Sign, Verify, Encrypt, CreateKey,
# "Key spec reference"). Adding a key spec is one KEY_SPECS entry; adding a signing algorithm is
# one SIGNING_ALGORITHMS entry (plus a scheme in crypto.py if it is a new kind of signature).

RAW, DIGEST, EXTERNAL_MU = "RAW", "DIGEST", "EXTERNAL_MU"
MESSAGE_TYPES = (RAW, DIGEST, EXTERNAL_MU)
MAX_MESSAGE = 4096  # Sign/Verify Message and Encrypt Plaintext: 1..4096 bytes
MAX_SIGNATURE = 6144  # Verify Signature blob
MAX_CIPHERTEXT = 6144  # Decrypt CiphertextBlob


@dataclass(frozen=True)
class SigningAlgorithm:
    """How one KMS signing algorithm signs: its scheme, hash, and accepted message types.

    ``message_types`` maps each accepted MessageType to the exact Message length it requires
    (None: any length from 1 to MAX_MESSAGE)."""

    scheme: str  # a key of crypto.SCHEMES
    hash: type[hashes.HashAlgorithm] | None
    message_types: dict[str, int | None]


def _hashed(scheme: str, hash_cls: type[hashes.HashAlgorithm]) -> SigningAlgorithm:
    return SigningAlgorithm(scheme, hash_cls, {RAW: None, DIGEST: hash_cls.digest_size})


SIGNING_ALGORITHMS: dict[str, SigningAlgorithm] = {
    "RSASSA_PKCS1_V1_5_SHA_256": _hashed("RSA_PKCS1", hashes.SHA256),
    "RSASSA_PKCS1_V1_5_SHA_384": _hashed("RSA_PKCS1", hashes.SHA384),
    "RSASSA_PKCS1_V1_5_SHA_512": _hashed("RSA_PKCS1", hashes.SHA512),
    # PSS: salt as long as the hash, MGF1 with the same hash.
    "RSASSA_PSS_SHA_256": _hashed("RSA_PSS", hashes.SHA256),
    "RSASSA_PSS_SHA_384": _hashed("RSA_PSS", hashes.SHA384),
    "RSASSA_PSS_SHA_512": _hashed("RSA_PSS", hashes.SHA512),
    # ECDSA: DER-encoded (r, s).
    "ECDSA_SHA_256": _hashed("ECDSA", hashes.SHA256),
    "ECDSA_SHA_384": _hashed("ECDSA", hashes.SHA384),
    "ECDSA_SHA_512": _hashed("ECDSA", hashes.SHA512),
    # Ed25519 (pure) takes only RAW messages.
    "ED25519_SHA_512": SigningAlgorithm("ED25519", hashes.SHA512, {RAW: None}),
    # HashEdDSA Ed25519ph takes only DIGEST (a SHA-512 digest); KMS still applies the SHA-512
    # prehash of FIPS 186-5 7.8.1 step 1 to it, so the signed message is the digest itself.
    "ED25519_PH_SHA_512": SigningAlgorithm("ED25519_PH", hashes.SHA512, {DIGEST: 64}),
    # ML-DSA (FIPS 204), pure with an empty context; EXTERNAL_MU is the 64-byte mu of 6.2.
    "ML_DSA_SHAKE_256": SigningAlgorithm("ML_DSA", None, {RAW: None, EXTERNAL_MU: 64}),
}

# Algorithms KMS defines that no emulated key supports (China Regions only).
UNSUPPORTED_SIGNING_ALGORITHMS = ("SM2DSA",)
UNSUPPORTED_ENCRYPTION_ALGORITHMS = ("SM2PKE",)

ENCRYPTION_ALGORITHMS: dict[str, type[hashes.HashAlgorithm]] = {
    # RSAES-OAEP with MGF1 over the same hash and an empty label.
    "RSAES_OAEP_SHA_1": hashes.SHA1,
    "RSAES_OAEP_SHA_256": hashes.SHA256,
}

RSA_SIGNING = tuple(k for k in SIGNING_ALGORITHMS if k.startswith("RSASSA_"))
RSA_ENCRYPTION = tuple(ENCRYPTION_ALGORITHMS)


@dataclass(frozen=True)
class KeySpec:
    """One asymmetric KMS key spec: its key material and what each key usage may do with it.

    ``params`` is the RSA modulus size in bits, the EC curve class, or the ML-DSA parameter set.
    ``oaep_limits`` is the largest Encrypt plaintext per encryption algorithm (KMS's table)."""

    family: str  # a key of crypto.GENERATORS: RSA, EC, ED25519, ML_DSA
    params: object
    usages: tuple[str, ...]
    signing: tuple[str, ...] = ()
    encryption: tuple[str, ...] = ()
    key_agreement: tuple[str, ...] = ()
    oaep_limits: dict[str, int] = field(default_factory=dict)


def _rsa(bits: int, sha1_limit: int, sha256_limit: int) -> KeySpec:
    limits = {"RSAES_OAEP_SHA_1": sha1_limit, "RSAES_OAEP_SHA_256": sha256_limit}
    return KeySpec("RSA", bits, ("ENCRYPT_DECRYPT", "SIGN_VERIFY"), RSA_SIGNING, RSA_ENCRYPTION,
                   oaep_limits=limits)


def _nist(curve: type[ec.EllipticCurve], algorithm: str) -> KeySpec:
    return KeySpec("EC", curve, ("SIGN_VERIFY", "KEY_AGREEMENT"), (algorithm,),
                   key_agreement=("ECDH",))


KEY_SPECS: dict[str, KeySpec] = {
    "RSA_2048": _rsa(2048, 214, 190),
    "RSA_3072": _rsa(3072, 342, 318),
    "RSA_4096": _rsa(4096, 470, 446),
    "ECC_NIST_P256": _nist(ec.SECP256R1, "ECDSA_SHA_256"),
    "ECC_NIST_P384": _nist(ec.SECP384R1, "ECDSA_SHA_384"),
    "ECC_NIST_P521": _nist(ec.SECP521R1, "ECDSA_SHA_512"),
    "ECC_SECG_P256K1": KeySpec("EC", ec.SECP256K1, ("SIGN_VERIFY",), ("ECDSA_SHA_256",)),
    "ECC_NIST_EDWARDS25519": KeySpec("ED25519", None, ("SIGN_VERIFY",),
                                     ("ED25519_SHA_512", "ED25519_PH_SHA_512")),
    "ML_DSA_44": KeySpec("ML_DSA", 44, ("SIGN_VERIFY",), ("ML_DSA_SHAKE_256",)),
    "ML_DSA_65": KeySpec("ML_DSA", 65, ("SIGN_VERIFY",), ("ML_DSA_SHAKE_256",)),
    "ML_DSA_87": KeySpec("ML_DSA", 87, ("SIGN_VERIFY",), ("ML_DSA_SHAKE_256",)),
}

# Key specs without a key pair, served by moto's own key material, and their one usage.
SYMMETRIC_SPECS: dict[str, str] = {
    "SYMMETRIC_DEFAULT": "ENCRYPT_DECRYPT",
    "HMAC_224": "GENERATE_VERIFY_MAC",
    "HMAC_256": "GENERATE_VERIFY_MAC",
    "HMAC_384": "GENERATE_VERIFY_MAC",
    "HMAC_512": "GENERATE_VERIFY_MAC",
}

UNSUPPORTED_KEY_SPECS = ("SM2",)  # China Regions only
