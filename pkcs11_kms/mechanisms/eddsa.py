"""EdDSA signatures with Ed25519 keys (PKCS#11 3.0 §2.3.14): CKM_EDDSA.

KMS signs pure Ed25519 over the message itself (ED25519_SHA_512, MessageType RAW, at most 4096
bytes) and Ed25519ph over the message's SHA-512, computed here (ED25519_PH_SHA_512, MessageType
DIGEST), neither with a context. No parameter is Ed25519 (pkcs11-provider, GnuTLS and OpenSSH
pass none); CK_EDDSA_PARAMS with phFlag set and no context is Ed25519ph; without phFlag it is
Ed25519ctx (§2.3.14's table), which KMS cannot sign, as it cannot sign with a context:
CKR_MECHANISM_PARAM_INVALID. PKCS#11's signature is RFC 8032's 64 bytes, as KMS's.
"""

from __future__ import annotations

from ..ck import CKF, CKK, CKM, CKR
from ..core.mechanisms import Kind, Mechanism
from ..core.operations import KeyUse
from ..core.params import EddsaParams, MechanismArgs
from ..errors import PKCS11Error
from ..kms.specs import ED25519_PH_SHA_512, ED25519_SHA_512, MAX_MESSAGE, SIGN_VERIFY
from .base import Signature, ed25519_public_key, key_use
from .hashes import HASHES


class Eddsa(Signature):
    def __init__(self, use: KeyUse, prehash: bool) -> None:
        super().__init__(use, HASHES[CKM.SHA512] if prehash else None)
        self.prehash = prehash

    @property
    def max_input(self) -> int:
        return MAX_MESSAGE

    def kms_input(self, value: bytes) -> tuple[bytes, str, str]:
        if self.prehash:
            return value, "DIGEST", ED25519_PH_SHA_512
        if not value:
            raise PKCS11Error(CKR.DATA_LEN_RANGE, "KMS signs no empty message")
        return value, "RAW", ED25519_SHA_512

    def verify_locally(self, value: bytes, signature: bytes) -> None:
        if self.prehash:  # no local Ed25519ph: KMS verifies
            self.verify_in_kms(value, signature)
            return
        ed25519_public_key(self.use).verify(signature, value)


def _start(kind: Kind, use: KeyUse | None, args: MechanismArgs) -> Eddsa:
    p = args.params
    if p is None:
        return Eddsa(key_use(use), prehash=False)
    if not isinstance(p, EddsaParams):
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "CK_EDDSA_PARAMS expected")
    if p.context or not p.prehash:
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "KMS signs neither Ed25519ctx nor with a "
                          "context")
    return Eddsa(key_use(use), prehash=True)


MECHANISMS = (
    Mechanism(CKM.EDDSA, CKK.EC_EDWARDS, CKF.SIGN | CKF.VERIFY, SIGN_VERIFY, _start),
)
