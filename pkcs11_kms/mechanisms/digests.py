"""Message digests (PKCS#11 §2.16-2.20: CKM_SHA_1, CKM_SHA224 ... CKM_SHA512), computed locally.

KMS has no digest operation and needs none: these exist because consumers check for them before
they use a token's hash-and-sign mechanisms (Java's SunPKCS11 refuses RSASSA-PSS without them).
"""

from __future__ import annotations

from ..ck import CKF, CKR
from ..core.mechanisms import Kind, Mechanism, Start
from ..core.operations import KeyUse
from ..core.params import MechanismArgs
from ..errors import PKCS11Error
from .base import no_params
from .hashes import HASHES, Hash


class Digest:
    def __init__(self, hash_: Hash) -> None:
        self.hash = hash_
        self._hasher = hash_.new()

    def output_length(self, data_length: int) -> int:
        return self.hash.size

    def update(self, data: bytes) -> None:
        self._hasher.update(data)

    def finish(self) -> bytes:
        return self._hasher.digest()

    def verify(self, signature: bytes) -> None:
        raise PKCS11Error(CKR.FUNCTION_NOT_SUPPORTED)


def _start(hash_: Hash) -> Start:
    def start(kind: Kind, use: KeyUse | None, args: MechanismArgs) -> Digest:
        no_params(args)
        return Digest(hash_)

    return start


MECHANISMS = tuple(Mechanism(h.mechanism, None, CKF.DIGEST, None, _start(h))
                   for h in HASHES.values())
