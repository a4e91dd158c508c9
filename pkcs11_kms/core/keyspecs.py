"""The key specs and key usages the token exposes: KMS's key specs (kms/specs.py) with their
PKCS#11 key type, and each KMS key usage as PKCS#11 capabilities."""

from __future__ import annotations

from dataclasses import dataclass

from ..ck import CKA, CKK
from ..kms import specs as kms_specs


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


_KEY_TYPES = {kms_specs.RSA: CKK.RSA, kms_specs.EC: CKK.EC}
KEY_SPECS: dict[str, KeySpec] = {
    s.name: KeySpec(s.name, _KEY_TYPES[s.family], s.bits, s.curve)
    for s in kms_specs.KEY_SPECS.values()
}

# KMS KeyUsage -> (private key capability, public key capability)
KEY_USAGES: dict[str, tuple[CKA, CKA]] = {
    "SIGN_VERIFY": (CKA.SIGN, CKA.VERIFY),
    "ENCRYPT_DECRYPT": (CKA.DECRYPT, CKA.ENCRYPT),
}
