"""The key specs and key usages the token exposes: KMS's key specs (kms/specs.py) with their
PKCS#11 key type and sizes, and each KMS key usage as PKCS#11 capabilities."""

from __future__ import annotations

from dataclasses import dataclass

from ..ck import CKA, CKK, CKO, CKP
from ..kms import specs as kms_specs

# FIPS 204 Table 2: ML-DSA-44/65/87 -> (public key bytes, signature bytes)
ML_DSA_SIZES = {44: (1312, 2420), 65: (1952, 3309), 87: (2592, 4627)}
ML_DSA_PARAMETER_SETS = {44: CKP.ML_DSA_44, 65: CKP.ML_DSA_65, 87: CKP.ML_DSA_87}


@dataclass(frozen=True)
class KeySpec:
    name: str  # KMS KeySpec
    family: str  # kms/specs.py's: RSA, EC, ED25519, ML_DSA, HMAC
    key_type: CKK
    bits: int  # modulus bits, a curve's field size, an HMAC key's bits, ML-DSA's 44/65/87
    curve: str | None = None  # asn1crypto's named-curve name

    @property
    def signature_bytes(self) -> int:
        """RSA: the modulus length; ECDSA r||s: twice the field length; Ed25519: 64 (RFC 8032);
        ML-DSA: FIPS 204's; HMAC: the hash's length."""
        if self.family == kms_specs.RSA:
            return self.bits // 8
        if self.family == kms_specs.EC:
            return 2 * ((self.bits + 7) // 8)
        if self.family == kms_specs.ML_DSA:
            return ML_DSA_SIZES[self.bits][1]
        if self.family == kms_specs.ED25519:
            return 64
        return self.bits // 8

    @property
    def mechanism_size(self) -> int:
        """What C_GetMechanismInfo's key sizes count: bits; bytes for a secret key (as its
        CKA_VALUE_LEN) and for an ML-DSA public key (3.2)."""
        if self.family == kms_specs.ML_DSA:
            return ML_DSA_SIZES[self.bits][0]
        if self.family == kms_specs.HMAC:
            return self.bits // 8
        return self.bits


_KEY_TYPES = {
    kms_specs.RSA: CKK.RSA,
    kms_specs.EC: CKK.EC,
    kms_specs.ED25519: CKK.EC_EDWARDS,
    kms_specs.ML_DSA: CKK.ML_DSA,
    kms_specs.HMAC: CKK.GENERIC_SECRET,
}
KEY_SPECS: dict[str, KeySpec] = {
    s.name: KeySpec(s.name, s.family, _KEY_TYPES[s.family], s.bits, s.curve)
    for s in kms_specs.KEY_SPECS.values()
}


@dataclass(frozen=True)
class Usage:
    """A KMS key usage as PKCS#11 objects: the object classes a key appears as, and the capability
    (CKA_SIGN, CKA_DECRYPT ...) each has."""

    objects: dict[CKO, tuple[CKA, ...]]


KEY_USAGES: dict[str, Usage] = {
    kms_specs.SIGN_VERIFY: Usage({CKO.PRIVATE_KEY: (CKA.SIGN,), CKO.PUBLIC_KEY: (CKA.VERIFY,)}),
    kms_specs.ENCRYPT_DECRYPT: Usage({CKO.PRIVATE_KEY: (CKA.DECRYPT,),
                                      CKO.PUBLIC_KEY: (CKA.ENCRYPT,)}),
    kms_specs.KEY_AGREEMENT: Usage({CKO.PRIVATE_KEY: (CKA.DERIVE,), CKO.PUBLIC_KEY: ()}),
    kms_specs.GENERATE_VERIFY_MAC: Usage({CKO.SECRET_KEY: (CKA.SIGN, CKA.VERIFY)}),
}


def supported(key_spec: str, key_usage: str) -> bool:
    """A key spec of the table used for one of the usages KMS allows it."""
    spec = kms_specs.KEY_SPECS.get(key_spec)
    return spec is not None and key_usage in spec.usages and key_usage in KEY_USAGES
