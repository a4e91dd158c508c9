"""RSA-PSS signatures (PKCS#11 §2.1.10, §2.1.11): CKM_RSA_PKCS_PSS and CKM_SHA*_RSA_PKCS_PSS.

KMS signs PSS with MGF1 over the same hash and a salt as long as the hash; other parameters are
CKR_MECHANISM_PARAM_INVALID.
"""

from __future__ import annotations

from ..ck import CKF, CKK, CKM, CKR
from ..core.mechanisms import Kind, Mechanism, Start
from ..core.operations import KeyUse
from ..core.params import MechanismArgs, PssParams
from ..errors import PKCS11Error
from ..kms.specs import RSASSA_PSS
from .base import Signature, key_use, rsa_public_key
from .hashes import HASHES, Hash


def pss_hash(args: MechanismArgs, required: CKM | None) -> Hash:
    p = args.params
    if not isinstance(p, PssParams):
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "CK_RSA_PKCS_PSS_PARAMS required")
    h = HASHES.get(p.hash_alg)
    if h is None or not h.kms_signs or (required is not None and p.hash_alg != required):
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, f"PSS hash {p.hash_alg:#x}")
    if p.mgf != h.mgf or p.salt_length != h.size:
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "KMS uses MGF1 with the same hash and a "
                          "salt as long as the hash")
    return h


class Pss(Signature):
    def __init__(self, use: KeyUse, hash_: Hash, hashing: bool) -> None:
        super().__init__(use, hash_ if hashing else None)
        self.hash = hash_

    def to_kms(self, value: bytes) -> tuple[bytes, str]:
        if len(value) != self.hash.size:
            raise PKCS11Error(CKR.DATA_LEN_RANGE, f"a {self.hash.name} digest is {self.hash.size} bytes")
        return value, self.hash.kms_algorithm(RSASSA_PSS)

    def verify_locally(self, value: bytes, signature: bytes) -> None:
        if len(value) != self.hash.size:
            raise PKCS11Error(CKR.DATA_LEN_RANGE, f"a {self.hash.name} digest is {self.hash.size} bytes")
        from cryptography.hazmat.primitives.asymmetric import padding, utils

        pss = padding.PSS(padding.MGF1(self.hash.crypto()), self.hash.size)
        rsa_public_key(self.use).verify(signature, value, pss, utils.Prehashed(self.hash.crypto()))


def _start(required: CKM | None) -> Start:
    def start(kind: Kind, use: KeyUse | None, args: MechanismArgs) -> Pss:
        return Pss(key_use(use), pss_hash(args, required), hashing=required is not None)

    return start


FLAGS = CKF.SIGN | CKF.VERIFY
MECHANISMS = (
    Mechanism(m, CKK.RSA, FLAGS, "SIGN_VERIFY", _start(h), parameter="CK_RSA_PKCS_PSS_PARAMS")
    for m, h in ((CKM.RSA_PKCS_PSS, None), (CKM.SHA256_RSA_PKCS_PSS, CKM.SHA256),
                 (CKM.SHA384_RSA_PKCS_PSS, CKM.SHA384), (CKM.SHA512_RSA_PKCS_PSS, CKM.SHA512))
)
