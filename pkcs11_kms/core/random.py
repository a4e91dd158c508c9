"""Random numbers (PKCS#11 §5.15): KMS GenerateRandom, at most 1024 bytes a call."""

from __future__ import annotations

from ..ck import CKR
from ..errors import PKCS11Error
from .kms_errors import calling_kms
from .session import session

KMS_MAX_RANDOM = 1024


def generate_random(session_handle: int, length: int) -> bytes:
    s = session(session_handle)
    backend = s.token.backend
    chunks = []
    remaining = length
    while remaining > 0:
        n = min(remaining, KMS_MAX_RANDOM)
        with calling_kms():
            chunk = backend.generate_random(n)
        if len(chunk) != n:
            raise PKCS11Error(CKR.DEVICE_ERROR, f"KMS returned {len(chunk)} random bytes, not {n}")
        chunks.append(chunk)
        remaining -= n
    return b"".join(chunks)


def seed_random(session_handle: int) -> None:
    session(session_handle)
    raise PKCS11Error(CKR.RANDOM_SEED_NOT_SUPPORTED, "KMS's generator takes no seed")
