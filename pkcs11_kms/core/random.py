"""Random numbers (PKCS#11 §5.15): KMS GenerateRandom, at most 1024 bytes a call."""

from __future__ import annotations

from ..ck import CKR
from ..errors import PKCS11Error
from ..trust import wipe
from .kms_errors import calling_kms
from .session import session

KMS_MAX_RANDOM = 1024


def generate_random(session_handle: int, length: int) -> bytearray:
    """The bytes in a buffer the caller wipes once delivered (docs/security.md)."""
    s = session(session_handle)
    backend = s.token.backend
    out = bytearray(length)  # filled in place: no partial copies left behind
    try:
        for start in range(0, length, KMS_MAX_RANDOM):
            n = min(length - start, KMS_MAX_RANDOM)
            with calling_kms():
                chunk = backend.generate_random(n)
            if len(chunk) != n:
                raise PKCS11Error(CKR.DEVICE_ERROR,
                                  f"KMS returned {len(chunk)} random bytes, not {n}")
            out[start:start + n] = chunk
    except BaseException:
        wipe(out)
        raise
    return out


def seed_random(session_handle: int) -> None:
    session(session_handle)
    raise PKCS11Error(CKR.RANDOM_SEED_NOT_SUPPORTED, "KMS's generator takes no seed")
