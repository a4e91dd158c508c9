"""ML-DSA signatures (FIPS 204; PKCS#11 3.2): CKM_ML_DSA, pure, with an empty context.

KMS signs ML_DSA_SHAKE_256 over the message itself (MessageType RAW, 1 to 4096 bytes) or over its
64-byte mu (MessageType EXTERNAL_MU). Up to 4096 bytes go to KMS as they are; longer (or empty)
messages are hashed here into mu = SHAKE256(tr || 0 || 0 || M, 64), tr = SHAKE256(pk, 64) (FIPS
204 Algorithm 7 with an empty context), so any length can be signed. KMS signs hedged: a
CK_SIGN_ADDITIONAL_CONTEXT asking for a deterministic signature, or with a context, is
CKR_MECHANISM_PARAM_INVALID.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..ck import CKF, CKK, CKM, CKR
from ..core.mechanisms import Kind, Mechanism
from ..core.operations import KeyUse
from ..core.params import MechanismArgs, SignContext
from ..errors import PKCS11Error
from ..kms.specs import MAX_MESSAGE, ML_DSA_SHAKE_256, SIGN_VERIFY
from .base import Signature, key_use, public_key

HEDGE_PREFERRED, HEDGE_REQUIRED, DETERMINISTIC_REQUIRED = 0, 1, 2  # CK_HEDGE_TYPE (3.2)
MU_BYTES = 64


class MlDsa(Signature):
    def __init__(self, use: KeyUse) -> None:
        super().__init__(use, None)
        from ..core.spki import spki_public_key  # asn1crypto, when a key is used

        pk = spki_public_key(use.key.spki)
        self._mu = hashlib.shake_256(hashlib.shake_256(pk).digest(MU_BYTES) + b"\0\0")
        self._length = 0

    def update(self, data: bytes) -> None:
        self._mu.update(data)
        self._length += len(data)
        if self._length <= MAX_MESSAGE:
            self._data += data
        else:
            self._data.clear()  # mu it is: nothing more is kept

    def _value(self) -> bytes:
        if 0 < self._length <= MAX_MESSAGE:
            return bytes(self._data)
        return self._mu.digest(MU_BYTES)

    def kms_input(self, value: bytes) -> tuple[bytes, str, str]:
        raw = 0 < self._length <= MAX_MESSAGE
        return value, "RAW" if raw else "EXTERNAL_MU", ML_DSA_SHAKE_256

    def verify_locally(self, value: bytes, signature: bytes) -> None:
        from cryptography.exceptions import UnsupportedAlgorithm  # (docs/performance.md)

        try:
            key: Any = public_key(self.use)
        except UnsupportedAlgorithm:  # a cryptography without ML-DSA: KMS verifies
            self.verify_in_kms(value, signature)
            return
        if 0 < self._length <= MAX_MESSAGE:
            key.verify(signature, value)
        else:
            key.verify_mu(signature, value)


def _start(kind: Kind, use: KeyUse | None, args: MechanismArgs) -> MlDsa:
    p = args.params
    if p is not None:
        if not isinstance(p, SignContext):
            raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "CK_SIGN_ADDITIONAL_CONTEXT expected")
        if kind == Kind.SIGN and p.hedge not in (HEDGE_PREFERRED, HEDGE_REQUIRED):
            # on verification the hedge is ignored (3.2)
            raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "KMS signs ML-DSA hedged only")
        if p.context:
            raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "KMS signs ML-DSA without a context")
    return MlDsa(key_use(use))


MECHANISMS = (
    Mechanism(CKM.ML_DSA, CKK.ML_DSA, CKF.SIGN | CKF.VERIFY, SIGN_VERIFY, _start,
              parameter="CK_SIGN_ADDITIONAL_CONTEXT", parameter_optional=True),
)
