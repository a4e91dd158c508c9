"""ECDH key agreement (PKCS#11 §2.3.16): CKM_ECDH1_DERIVE and CKM_ECDH1_COFACTOR_DERIVE with a
KMS KEY_AGREEMENT key.

KMS's DeriveSharedSecret gives the raw shared secret Z (the x-coordinate, as long as the field).
CKD_NULL hands Z itself (its first CKA_VALUE_LEN bytes when the template asks for fewer);
CKD_SHA*_KDF applies ANSI X9.63's KDF here: Hash(Z || counter || SharedInfo), a 32-bit big-endian
counter from 1, until CKA_VALUE_LEN bytes (openssl cms -decrypt through pkcs11-provider asks for
it). The other party's public value is the uncompressed (or compressed) point, bare or in a DER
OCTET STRING; KMS receives it as a SubjectPublicKeyInfo on the key's curve.
"""

from __future__ import annotations

import hashlib

from ..ck import CKD, CKF, CKK, CKM, CKR
from ..core.mechanisms import Mechanism
from ..core.operations import KeyUse
from ..core.params import Ecdh1Params, MechanismArgs
from ..errors import PKCS11Error
from ..kms.specs import KEY_AGREEMENT, curve_class

# CKD_*_KDF -> hashlib's name (X9.63 with that hash)
KDF_HASHES = {CKD.SHA1_KDF: "sha1", CKD.SHA224_KDF: "sha224", CKD.SHA256_KDF: "sha256",
              CKD.SHA384_KDF: "sha384", CKD.SHA512_KDF: "sha512"}


def x963_kdf(hash_name: str, z: bytes, shared_info: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 1
    while len(out) < length:
        out += hashlib.new(hash_name, z + counter.to_bytes(4, "big") + shared_info).digest()
        counter += 1
    return bytes(out[:length])


def _peer_key(use: KeyUse, public_data: bytes) -> bytes:
    """The other party's point as the SubjectPublicKeyInfo KMS takes."""
    from asn1crypto import core  # imported when needed (docs/performance.md)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    field = (use.key.spec.bits + 7) // 8
    point = public_data
    if len(point) not in (1 + 2 * field, 1 + field):  # not a bare uncompressed/compressed point
        try:  # a DER OCTET STRING around it (what CKA_EC_POINT holds)
            point = core.OctetString.load(point).native
        except ValueError:
            pass
    curve_name = use.key.spec.curve
    assert curve_name is not None
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(curve_class(curve_name)(), point)
    except ValueError:
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID,
                          f"the public data is not a point on {curve_name}") from None
    return peer.public_bytes(serialization.Encoding.DER,
                             serialization.PublicFormat.SubjectPublicKeyInfo)


def derive(use: KeyUse, args: MechanismArgs, length: int | None) -> bytes:
    """The derived key's value: `length` bytes, or Z's length when the template says none."""
    p = args.params
    if not isinstance(p, Ecdh1Params):
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "CK_ECDH1_DERIVE_PARAMS expected")
    if p.kdf != CKD.NULL and p.kdf not in KDF_HASHES:
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, f"KDF {p.kdf:#x}")
    if p.kdf == CKD.NULL and p.shared_data:
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "CKD_NULL takes no shared data")
    if p.kdf != CKD.NULL and length is None:
        raise PKCS11Error(CKR.TEMPLATE_INCOMPLETE, "a KDF needs CKA_VALUE_LEN")
    peer = _peer_key(use, p.public_data)
    z = use.backend.derive_shared_secret(use.key_ref, peer)
    if p.kdf != CKD.NULL:
        assert length is not None
        return x963_kdf(KDF_HASHES[CKD(p.kdf)], z, p.shared_data, length)
    if length is not None and length > len(z):
        raise PKCS11Error(CKR.TEMPLATE_INCONSISTENT, f"the shared secret has {len(z)} bytes")
    return z[:length] if length is not None else z


FLAGS = CKF.DERIVE | CKF.EC_F_P | CKF.EC_NAMEDCURVE | CKF.EC_UNCOMPRESS | CKF.EC_COMPRESS
# The NIST curves' cofactor is 1: cofactor ECDH is plain ECDH on them (pkcs11-provider asks for it
# in its cofactor mode).
MECHANISMS = tuple(
    Mechanism(m, CKK.EC, FLAGS, KEY_AGREEMENT, None, derive=derive,
              parameter="CK_ECDH1_DERIVE_PARAMS")
    for m in (CKM.ECDH1_DERIVE, CKM.ECDH1_COFACTOR_DERIVE)
)
