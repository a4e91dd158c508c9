"""The tables the emulator follows: KMS key specs and signing/encryption algorithms."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes

from ..kms import specs as kms_specs
from ..kms.specs import (
    ECDSA,
    OAEP_HASHES,
    RSAES_OAEP,
    RSASSA_PKCS1_V1_5,
    RSASSA_PSS,
    SIGNING_HASHES,
    algorithm_name,
    curve_class,
    digest_bytes,
    hash_class,
)

# The AWS KMS API reference is the source of every value below (Sign, Verify, Encrypt, CreateKey,
# "Key spec reference"). The RSA and ECC key specs and their algorithms are the module's table
# (pkcs11_kms/kms/specs.py): adding one there adds it here. Adding another key spec is one
# KEY_SPECS entry; adding a signing algorithm is one SIGNING_ALGORITHMS entry (plus a scheme in
# crypto.py if it is a new kind of signature).

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


# KMS's scheme -> its key of crypto.SCHEMES
_SCHEMES = {RSASSA_PKCS1_V1_5: "RSA_PKCS1", RSASSA_PSS: "RSA_PSS", ECDSA: "ECDSA"}

SIGNING_ALGORITHMS: dict[str, SigningAlgorithm] = {
    # RSASSA-PKCS1-v1_5, RSASSA-PSS and ECDSA over each signing hash: RAW, or DIGEST of its length.
    **{algorithm_name(scheme, h): SigningAlgorithm(ours, hash_class(h),
                                                   {RAW: None, DIGEST: digest_bytes(h)})
       for scheme, ours in _SCHEMES.items() for h in SIGNING_HASHES},
    # Ed25519 (pure) takes only RAW messages.
    "ED25519_SHA_512": SigningAlgorithm("ED25519", hashes.SHA512, {RAW: None}),
    # HashEdDSA Ed25519ph takes only DIGEST (a SHA-512 digest); KMS still applies the SHA-512
    # prehash of FIPS 186-5 7.8.1 step 1 to it, so the signed message is the digest itself.
    "ED25519_PH_SHA_512": SigningAlgorithm("ED25519_PH", hashes.SHA512,
                                           {DIGEST: hashes.SHA512.digest_size}),
    # ML-DSA (FIPS 204), pure with an empty context; EXTERNAL_MU is the 64-byte mu of 6.2.
    "ML_DSA_SHAKE_256": SigningAlgorithm("ML_DSA", None, {RAW: None, EXTERNAL_MU: 64}),
}

# Algorithms KMS defines that no emulated key supports (China Regions only).
UNSUPPORTED_SIGNING_ALGORITHMS = ("SM2DSA",)
UNSUPPORTED_ENCRYPTION_ALGORITHMS = ("SM2PKE",)

ENCRYPTION_ALGORITHMS: dict[str, type[hashes.HashAlgorithm]] = {
    # RSAES-OAEP with MGF1 over the same hash and an empty label.
    algorithm_name(RSAES_OAEP, h): hash_class(h) for h in OAEP_HASHES
}


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


def _served(spec: kms_specs.KeySpec) -> KeySpec:
    """An asymmetric key spec of the module's table, as the emulator serves it."""
    usages = spec.usages
    if spec.family == kms_specs.RSA:
        # KMS's Encrypt limits are RFC 8017's: the modulus less two hashes and two bytes.
        limits = {a: spec.bits // 8 - 2 * ENCRYPTION_ALGORITHMS[a]().digest_size - 2
                  for a in spec.encryption_algorithms}
        return KeySpec(spec.family, spec.bits, usages, spec.signing_algorithms,
                       spec.encryption_algorithms, oaep_limits=limits)
    if spec.family == kms_specs.EC:
        assert spec.curve is not None
        return KeySpec(spec.family, curve_class(spec.curve), usages, spec.signing_algorithms,
                       key_agreement=spec.key_agreement_algorithms)
    params = spec.bits if spec.family == kms_specs.ML_DSA else None
    return KeySpec(spec.family, params, usages, spec.signing_algorithms)


KEY_SPECS: dict[str, KeySpec] = {
    name: _served(spec) for name, spec in kms_specs.KEY_SPECS.items()
    if spec.family != kms_specs.HMAC  # served by moto's own key material, below
}

# Key specs without a key pair, served by moto's own key material, and their one usage.
SYMMETRIC_SPECS: dict[str, str] = {
    "SYMMETRIC_DEFAULT": "ENCRYPT_DECRYPT",
    **{spec.name: kms_specs.GENERATE_VERIFY_MAC for spec in kms_specs.KEY_SPECS.values()
       if spec.family == kms_specs.HMAC},
}

UNSUPPORTED_KEY_SPECS = ("SM2",)  # China Regions only

# GenerateMac/VerifyMac (RFC 2104 HMAC): each HMAC key spec allows exactly the MAC algorithm of its
# size, and its key material is that many bits (the module's table, kms/specs.py).
_HMAC = [spec for spec in kms_specs.KEY_SPECS.values() if spec.family == kms_specs.HMAC]
MAC_ALGORITHMS: dict[str, type[hashes.HashAlgorithm]] = {
    spec.mac_algorithms[0]: hash_class(spec.hash) for spec in _HMAC if spec.hash
}
# HMAC key spec -> (its one MAC algorithm, its key length in bytes)
HMAC_KEY_SPECS: dict[str, tuple[str, int]] = {
    spec.name: (spec.mac_algorithms[0], spec.bits // 8) for spec in _HMAC
}
MAX_MAC = 6144  # VerifyMac Mac blob (CiphertextType)

# DeriveSharedSecret: ECDH is the only KeyAgreementAlgorithm; PublicKey is a 1..8192-byte DER SPKI.
KEY_AGREEMENT_ALGORITHMS = (kms_specs.ECDH,)
MAX_PUBLIC_KEY = 8192
