"""Slots and tokens (PKCS#11 §5.5): slot list, slot/token info, mechanism list and info."""

from __future__ import annotations

from dataclasses import dataclass

from ..ck import CK_EFFECTIVELY_INFINITE, CK_UNAVAILABLE_INFORMATION, CKF, CKR
from ..errors import PKCS11Error
from . import mechanisms
from .module import LIBRARY_VERSION, MANUFACTURER, module
from .session import sessions_of

MAX_PIN = 255


@dataclass(frozen=True)
class SlotInfo:
    description: str
    manufacturer: str
    flags: int
    hardware_version: tuple[int, int] = (0, 0)
    firmware_version: tuple[int, int] = LIBRARY_VERSION


@dataclass(frozen=True)
class TokenInfo:
    label: str
    manufacturer: str
    model: str
    serial: str
    flags: int
    session_count: int
    rw_session_count: int
    max_session_count: int = CK_EFFECTIVELY_INFINITE
    max_rw_session_count: int = CK_EFFECTIVELY_INFINITE
    max_pin_len: int = MAX_PIN
    min_pin_len: int = 0
    # KMS holds the keys: the token has no memory to report.
    total_public_memory: int = CK_UNAVAILABLE_INFORMATION
    free_public_memory: int = CK_UNAVAILABLE_INFORMATION
    total_private_memory: int = CK_UNAVAILABLE_INFORMATION
    free_private_memory: int = CK_UNAVAILABLE_INFORMATION
    hardware_version: tuple[int, int] = (0, 0)
    firmware_version: tuple[int, int] = LIBRARY_VERSION
    utc_time: str = ""  # no clock on the token


def get_slot_list(token_present: bool) -> list[int]:
    """Every slot always holds its token."""
    return [t.slot_id for t in module().tokens()]


def get_slot_info(slot_id: int) -> SlotInfo:
    token = module().token(slot_id)
    return SlotInfo(f"AWS KMS: {token.label}", MANUFACTURER, CKF.TOKEN_PRESENT | CKF.HW_SLOT)


def get_token_info(slot_id: int) -> TokenInfo:
    m = module()
    token = m.token(slot_id)
    with m.lock:
        sessions = sessions_of(m, token)
    rw = sum(1 for s in sessions if s.flags & CKF.RW_SESSION)
    # No CKF_LOGIN_REQUIRED: KMS authorises with IAM, and consumers then never ask for a PIN.
    flags = CKF.TOKEN_INITIALIZED | CKF.RNG | CKF.USER_PIN_INITIALIZED
    return TokenInfo(token.label, MANUFACTURER, "AWS KMS", token.serial, flags, len(sessions), rw)


def token_mechanisms(slot_id: int) -> dict[int, tuple[int, int, int]]:
    token = module().token(slot_id)
    return mechanisms.offered((k.spec, k.usage) for k in token.keys())


def get_mechanism_list(slot_id: int) -> list[int]:
    return list(token_mechanisms(slot_id))


def get_mechanism_info(slot_id: int, mechanism: int) -> tuple[int, int, int]:
    info = token_mechanisms(slot_id).get(mechanism)
    if info is None:
        raise PKCS11Error(CKR.MECHANISM_INVALID, f"mechanism {mechanism:#x} is not offered")
    return info

