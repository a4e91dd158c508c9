"""KMS key specs and key usages the token exposes: one table each, keyed by KMS's names."""

from __future__ import annotations

from dataclasses import dataclass

from ..ck import CKA, CKK


@dataclass(frozen=True)
class KeySpec:
    name: str  # KMS KeySpec
    key_type: CKK
    bits: int  # modulus bits, or the curve's field size
    curve: str | None = None  # asn1crypto's named-curve name

    @property
    def signature_bytes(self) -> int:
        """RSA: the modulus length; ECDSA r||s: twice the field length."""
        if self.key_type == CKK.RSA:
            return self.bits // 8
        return 2 * ((self.bits + 7) // 8)


KEY_SPECS: dict[str, KeySpec] = {
    s.name: s
    for s in (
        KeySpec("RSA_2048", CKK.RSA, 2048),
        KeySpec("RSA_3072", CKK.RSA, 3072),
        KeySpec("RSA_4096", CKK.RSA, 4096),
        KeySpec("ECC_NIST_P256", CKK.EC, 256, "secp256r1"),
        KeySpec("ECC_NIST_P384", CKK.EC, 384, "secp384r1"),
        KeySpec("ECC_NIST_P521", CKK.EC, 521, "secp521r1"),
        KeySpec("ECC_SECG_P256K1", CKK.EC, 256, "secp256k1"),
    )
}

# KMS KeyUsage -> (private key capability, public key capability)
KEY_USAGES: dict[str, tuple[CKA, CKA]] = {
    "SIGN_VERIFY": (CKA.SIGN, CKA.VERIFY),
    "ENCRYPT_DECRYPT": (CKA.DECRYPT, CKA.ENCRYPT),
}
