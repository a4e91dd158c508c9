"""The DER of a key's public half: the public key a SubjectPublicKeyInfo holds, and the
attributes PKCS#11 gives each key type from it. Imported when keys are read, not when a host only
lists slots: asn1crypto takes ~20 ms to import (docs/performance.md)."""

from __future__ import annotations

from asn1crypto import core, keys

from ..ck import CKA
from ..kms import specs as kms_specs
from .keyspecs import ML_DSA_PARAMETER_SETS, KeySpec


class _Spki(core.Sequence):
    """SubjectPublicKeyInfo of any algorithm (asn1crypto's own class knows no ML-DSA)."""

    _fields = [("algorithm", core.Any), ("public_key", core.OctetBitString)]


def spki_public_key(spki: bytes) -> bytes:
    """The public key a SubjectPublicKeyInfo holds: an EC point, an Ed25519 or ML-DSA key, an
    RSAPublicKey's DER."""
    return bytes(_Spki.load(spki)["public_key"])


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


# CKA_EC_PARAMS of an Ed25519 key: id-Ed25519 (RFC 8410). PKCS#11 3.0 allows it or the
# PrintableString "edwards25519"; pkcs11-provider, GnuTLS and OpenSSH read both
# (docs/design.md, "Ed25519 objects"). CKA_EC_POINT is the key in a DER OCTET STRING, which they
# need (the raw 32 bytes of the 3.1 text make pkcs11-provider 1.0 and GnuTLS 3.7 refuse the key).
EDWARDS25519_PARAMS = core.ObjectIdentifier("1.3.101.112").dump()


def public_parts(spec: KeySpec, spki: bytes) -> dict[int, object]:
    """The public key's own attributes, as the key type defines them."""
    if spec.family == kms_specs.HMAC:
        return {CKA.VALUE_LEN: spec.bits // 8}
    if spec.family == kms_specs.RSA:
        rsa = keys.PublicKeyInfo.load(spki)["public_key"].parsed
        return {
            CKA.MODULUS: _int_bytes(rsa["modulus"].native),
            CKA.PUBLIC_EXPONENT: _int_bytes(rsa["public_exponent"].native),
            CKA.MODULUS_BITS: spec.bits,
        }
    point = spki_public_key(spki)
    if spec.family == kms_specs.ML_DSA:
        return {CKA.PARAMETER_SET: ML_DSA_PARAMETER_SETS[spec.bits], CKA.VALUE: point}
    if spec.family == kms_specs.ED25519:
        params = EDWARDS25519_PARAMS
    else:
        params = keys.ECDomainParameters(name="named", value=spec.curve).dump()
    return {CKA.EC_PARAMS: params, CKA.EC_POINT: core.OctetString(point).dump()}
