"""The KMS key specs the module uses and KMS's algorithm names: one table, KMS's words.

From the AWS KMS API reference ("Key spec reference", Sign, Encrypt, GenerateMac,
DeriveSharedSecret). KMS names an algorithm by its scheme and its hash (RSASSA_PSS_SHA_384). An RSA
key signs with both RSASSA schemes over every signing hash, and encrypts with RSAES-OAEP; an ECC
key signs with ECDSA over the one hash KMS fixes for its curve (docs/design.md, "Digests per
curve"), and a NIST-curve key may instead agree secrets (ECDH); Ed25519 keys sign pure or
prehashed; ML-DSA keys sign pure (FIPS 204); an HMAC key MACs with its one hash. KMS lists the same
algorithms for every key of a spec, so this table is their one home. Digest lengths are hashlib's.
Imports only the standard library: importing the KMS backend stays light.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

# Key families.
RSA, EC, ED25519, ML_DSA, HMAC = "RSA", "EC", "ED25519", "ML_DSA", "HMAC"

# Schemes, as KMS's algorithm names begin.
RSASSA_PKCS1_V1_5 = "RSASSA_PKCS1_V1_5"
RSASSA_PSS = "RSASSA_PSS"  # a salt as long as the hash, MGF1 over the same hash
ECDSA = "ECDSA"  # the signature DER-encoded (r, s)
RSAES_OAEP = "RSAES_OAEP"  # MGF1 over the same hash, an empty label
ED25519_SHA_512 = "ED25519_SHA_512"  # pure Ed25519 (RFC 8032), MessageType RAW only
ED25519_PH_SHA_512 = "ED25519_PH_SHA_512"  # Ed25519ph, MessageType DIGEST: the SHA-512 of the message
ML_DSA_SHAKE_256 = "ML_DSA_SHAKE_256"  # FIPS 204 pure ML-DSA, empty context: RAW or EXTERNAL_MU
ECDH = "ECDH"  # DeriveSharedSecret's only KeyAgreementAlgorithm: the raw shared x-coordinate
# Signed over the message itself (MessageType RAW; ML-DSA also EXTERNAL_MU), never over a digest
RAW_ONLY = (ED25519_SHA_512, ML_DSA_SHAKE_256)

# KeyUsage values.
SIGN_VERIFY, ENCRYPT_DECRYPT = "SIGN_VERIFY", "ENCRYPT_DECRYPT"
GENERATE_VERIFY_MAC, KEY_AGREEMENT = "GENERATE_VERIFY_MAC", "KEY_AGREEMENT"

MAX_MESSAGE = 4096  # Sign's RAW Message and GenerateMac's Message: at most 4096 bytes

# Hashes, as KMS's algorithm names end.
SIGNING_HASHES = ("SHA_256", "SHA_384", "SHA_512")  # KMS signs no SHA-1 or SHA-224 digest
OAEP_HASHES = ("SHA_1", "SHA_256")


def algorithm_name(scheme: str, hash_: str) -> str:
    """KMS's name of a scheme over a hash: (RSASSA_PSS, SHA_384) -> RSASSA_PSS_SHA_384."""
    return f"{scheme}_{hash_}"


def hash_of(algorithm: str) -> str | None:
    """The SHA hash a KMS algorithm name ends with (ECDSA_SHA_384 -> SHA_384); None if none
    (ML_DSA_SHAKE_256, SM2DSA)."""
    _, found, bits = algorithm.rpartition("_SHA_")
    return f"SHA_{bits}" if found else None


def hashlib_name(hash_: str) -> str:
    """SHA_256 -> sha256."""
    return hash_.replace("_", "").lower()


def digest_bytes(hash_: str) -> int:
    """SHA_384 -> 48: the length of a digest KMS signs with MessageType DIGEST."""
    return hashlib.new(hashlib_name(hash_)).digest_size


def hash_class(hash_: str) -> Any:
    """SHA_256 -> cryptography's hashes.SHA256 (cryptography is imported here, when first asked)."""
    from cryptography.hazmat.primitives import hashes

    return getattr(hashes, hashlib_name(hash_).upper())


def curve_class(curve: str) -> Any:
    """secp256r1 -> cryptography's ec.SECP256R1 (cryptography imported when first asked)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return getattr(ec, curve.upper())


RSA_SIGNING = tuple(
    algorithm_name(scheme, h) for scheme in (RSASSA_PKCS1_V1_5, RSASSA_PSS) for h in SIGNING_HASHES
)
RSA_ENCRYPTION = tuple(algorithm_name(RSAES_OAEP, h) for h in OAEP_HASHES)


@dataclass(frozen=True)
class KeySpec:
    """One KMS KeySpec: its key, the key usages KMS allows it, and the algorithms of each."""

    name: str  # KMS KeySpec
    family: str  # RSA, EC, ED25519, ML_DSA, HMAC
    bits: int  # RSA modulus bits, a curve's field size, an HMAC key's bits, ML-DSA's 44/65/87
    curve: str | None = None  # EC: the SEC 2 name (secp256r1 ...), as asn1crypto and cryptography
    hash: str | None = None  # EC, HMAC: the one hash KMS signs or MACs with

    @property
    def usages(self) -> tuple[str, ...]:
        if self.family == RSA:
            return (ENCRYPT_DECRYPT, SIGN_VERIFY)
        if self.family == HMAC:
            return (GENERATE_VERIFY_MAC,)
        if self.family == EC and self.name.startswith("ECC_NIST_"):  # ECDH on NIST curves only
            return (SIGN_VERIFY, KEY_AGREEMENT)
        return (SIGN_VERIFY,)

    @property
    def signing_algorithms(self) -> tuple[str, ...]:
        """What a SIGN_VERIFY key of this spec signs with, as GetPublicKey lists them."""
        if self.family == RSA:
            return RSA_SIGNING
        if self.family == EC:
            assert self.hash is not None
            return (algorithm_name(ECDSA, self.hash),)
        if self.family == ED25519:
            return (ED25519_SHA_512, ED25519_PH_SHA_512)
        if self.family == ML_DSA:
            return (ML_DSA_SHAKE_256,)
        return ()

    @property
    def encryption_algorithms(self) -> tuple[str, ...]:
        """What an ENCRYPT_DECRYPT key of this spec encrypts with (only RSA keys can)."""
        return RSA_ENCRYPTION if self.family == RSA else ()

    @property
    def mac_algorithms(self) -> tuple[str, ...]:
        """HMAC_256 -> HMAC_SHA_256: each HMAC key spec MACs with its one hash."""
        return (algorithm_name("HMAC", self.hash),) if self.family == HMAC and self.hash else ()

    @property
    def key_agreement_algorithms(self) -> tuple[str, ...]:
        return (ECDH,) if KEY_AGREEMENT in self.usages else ()


def has_public_key(key_spec: str) -> bool:
    """GetPublicKey answers for every asymmetric key spec; HMAC and symmetric keys have none."""
    spec = KEY_SPECS.get(key_spec)
    return spec is not None and spec.family != HMAC


KEY_SPECS: dict[str, KeySpec] = {
    s.name: s
    for s in (
        KeySpec("RSA_2048", RSA, 2048),
        KeySpec("RSA_3072", RSA, 3072),
        KeySpec("RSA_4096", RSA, 4096),
        KeySpec("ECC_NIST_P256", EC, 256, "secp256r1", "SHA_256"),
        KeySpec("ECC_NIST_P384", EC, 384, "secp384r1", "SHA_384"),
        KeySpec("ECC_NIST_P521", EC, 521, "secp521r1", "SHA_512"),
        KeySpec("ECC_SECG_P256K1", EC, 256, "secp256k1", "SHA_256"),
        KeySpec("ECC_NIST_EDWARDS25519", ED25519, 256),
        KeySpec("ML_DSA_44", ML_DSA, 44),
        KeySpec("ML_DSA_65", ML_DSA, 65),
        KeySpec("ML_DSA_87", ML_DSA, 87),
        KeySpec("HMAC_224", HMAC, 224, hash="SHA_224"),
        KeySpec("HMAC_256", HMAC, 256, hash="SHA_256"),
        KeySpec("HMAC_384", HMAC, 384, hash="SHA_384"),
        KeySpec("HMAC_512", HMAC, 512, hash="SHA_512"),
    )
}
