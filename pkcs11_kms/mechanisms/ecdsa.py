"""ECDSA signatures (PKCS#11 §2.3.6): CKM_ECDSA and CKM_ECDSA_SHA256/384/512.

KMS fixes one hash per curve and signs a digest of exactly that length. ECDSA only uses the
leftmost bits of a digest (as many as the group order has), so a digest of another length is
truncated or left-padded with zeros to the curve's length: the signature is the one the caller's
digest asks for. PKCS#11's signature is r||s, each as long as the field.
"""

from __future__ import annotations

from ..ck import CKF, CKK, CKM, CKR
from ..core.mechanisms import Kind, Mechanism, Start
from ..core.operations import KeyUse
from ..core.params import MechanismArgs
from ..errors import PKCS11Error
from ..kms.specs import KEY_SPECS, digest_bytes
from .base import Signature, ec_public_key, key_use, no_params
from .hashes import BY_SIZE, HASHES

# SHA-224/256/384/512 digests; SHA-1 is refused as KMS refuses it
RAW_DIGEST_LENGTHS = frozenset(h.size for h in HASHES.values() if h.mechanism != CKM.SHA_1)


def fit(digest: bytes, length: int) -> bytes:
    return digest[:length] if len(digest) >= length else digest.rjust(length, b"\0")


class Ecdsa(Signature):
    @property
    def field_bytes(self) -> int:
        return (self.use.key.spec.bits + 7) // 8

    def to_kms(self, value: bytes) -> tuple[bytes, str]:
        if self._hasher is None and len(value) not in RAW_DIGEST_LENGTHS:
            raise PKCS11Error(CKR.DATA_LEN_RANGE, f"{len(value)}-byte digest")
        kms_spec = KEY_SPECS[self.use.key.spec.name]
        assert kms_spec.hash is not None  # KMS signs with the curve's one hash
        (algorithm,) = kms_spec.signing_algorithms
        return fit(value, digest_bytes(kms_spec.hash)), algorithm

    def from_kms(self, signature: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric import utils  # (docs/performance.md)

        r, s = utils.decode_dss_signature(signature)
        n = self.field_bytes
        return r.to_bytes(n, "big") + s.to_bytes(n, "big")

    def to_kms_signature(self, signature: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric import utils

        n = self.field_bytes
        return utils.encode_dss_signature(
            int.from_bytes(signature[:n], "big"), int.from_bytes(signature[n:], "big")
        )

    def verify_locally(self, value: bytes, signature: bytes) -> None:
        h = BY_SIZE.get(len(value))
        if h is None:
            raise PKCS11Error(CKR.DATA_LEN_RANGE, f"{len(value)}-byte digest")
        from cryptography.hazmat.primitives.asymmetric import ec, utils

        ec_public_key(self.use).verify(
            self.to_kms_signature(signature), value, ec.ECDSA(utils.Prehashed(h.crypto()))
        )


def _start(hash_mechanism: CKM | None) -> Start:
    def start(kind: Kind, use: KeyUse | None, args: MechanismArgs) -> Ecdsa:
        no_params(args)
        return Ecdsa(key_use(use), HASHES[hash_mechanism] if hash_mechanism is not None else None)

    return start


FLAGS = CKF.SIGN | CKF.VERIFY | CKF.EC_F_P | CKF.EC_NAMEDCURVE | CKF.EC_UNCOMPRESS
MECHANISMS = (
    Mechanism(CKM.ECDSA, CKK.EC, FLAGS, "SIGN_VERIFY", _start(None)),
    Mechanism(CKM.ECDSA_SHA256, CKK.EC, FLAGS, "SIGN_VERIFY", _start(CKM.SHA256)),
    Mechanism(CKM.ECDSA_SHA384, CKK.EC, FLAGS, "SIGN_VERIFY", _start(CKM.SHA384)),
    Mechanism(CKM.ECDSA_SHA512, CKK.EC, FLAGS, "SIGN_VERIFY", _start(CKM.SHA512)),
)
