"""KMS's asymmetric key specs the module uses and KMS's algorithm names: one table, KMS's words.

From the AWS KMS API reference ("Key spec reference", Sign, Encrypt). KMS names an algorithm by its
scheme and its hash (RSASSA_PSS_SHA_384). An RSA key signs with both RSASSA schemes over every
signing hash, and encrypts with RSAES-OAEP; an ECC key signs with ECDSA over the one hash KMS
fixes for its curve (docs/design.md, "Digests per curve"). Digest lengths are hashlib's. Imports
only the standard library: importing the KMS backend stays light.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

# Key families.
RSA, EC = "RSA", "EC"

# Schemes, as KMS's algorithm names begin.
RSASSA_PKCS1_V1_5 = "RSASSA_PKCS1_V1_5"
RSASSA_PSS = "RSASSA_PSS"  # a salt as long as the hash, MGF1 over the same hash
ECDSA = "ECDSA"  # the signature DER-encoded (r, s)
RSAES_OAEP = "RSAES_OAEP"  # MGF1 over the same hash, an empty label

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


RSA_SIGNING = tuple(
    algorithm_name(scheme, h) for scheme in (RSASSA_PKCS1_V1_5, RSASSA_PSS) for h in SIGNING_HASHES
)
RSA_ENCRYPTION = tuple(algorithm_name(RSAES_OAEP, h) for h in OAEP_HASHES)


@dataclass(frozen=True)
class KeySpec:
    """One KMS KeySpec: its key, and the algorithms KMS offers for it."""

    name: str  # KMS KeySpec
    family: str  # RSA or EC
    bits: int  # modulus bits, or the curve's field size
    curve: str | None = None  # EC: the SEC 2 name (secp256r1 ...), as asn1crypto and cryptography
    hash: str | None = None  # EC: the one hash KMS signs with on this curve

    @property
    def signing_algorithms(self) -> tuple[str, ...]:
        """What a SIGN_VERIFY key of this spec signs with, as GetPublicKey lists them."""
        if self.hash is None:  # RSA
            return RSA_SIGNING
        return (algorithm_name(ECDSA, self.hash),)

    @property
    def encryption_algorithms(self) -> tuple[str, ...]:
        """What an ENCRYPT_DECRYPT key of this spec encrypts with (ECC keys cannot)."""
        return RSA_ENCRYPTION if self.family == RSA else ()


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
    )
}
