"""Object access (PKCS#11 §5.7): finding objects and reading their attributes."""

from __future__ import annotations

from ..ck import CKR
from ..errors import PKCS11Error
from .objects import TokenObject
from .session import Session, session


def _object(s: Session, handle: int) -> TokenObject:
    for o in s.token.objects():
        if o.handle == handle:
            return o
    raise PKCS11Error(CKR.OBJECT_HANDLE_INVALID, f"no object {handle}")


def find_object(session_handle: int, handle: int) -> TokenObject:
    return _object(session(session_handle), handle)


def find_objects_init(session_handle: int, template: list[tuple[int, bytes]]) -> None:
    s = session(session_handle)
    if s.find is not None:
        raise PKCS11Error(CKR.OPERATION_ACTIVE, "a search is already active")
    s.find = [o.handle for o in s.token.objects() if o.matches(template)]


def find_objects(session_handle: int, max_count: int) -> list[int]:
    s = session(session_handle)
    if s.find is None:
        raise PKCS11Error(CKR.OPERATION_NOT_INITIALIZED, "no active search")
    found, s.find = s.find[:max_count], s.find[max_count:]
    return found


def find_objects_final(session_handle: int) -> None:
    s = session(session_handle)
    if s.find is None:
        raise PKCS11Error(CKR.OPERATION_NOT_INITIALIZED, "no active search")
    s.find = None


def attribute_values(session_handle: int, handle: int, types: list[int]) -> list[bytes | CKR]:
    """Each requested attribute's packed value, or why it has none (§5.7 C_GetAttributeValue)."""
    o = find_object(session_handle, handle)
    out: list[bytes | CKR] = []
    for t in types:
        if t in o.sensitive:
            out.append(CKR.ATTRIBUTE_SENSITIVE)
        elif t in o.attributes:
            out.append(o.attributes[t])
        else:
            out.append(CKR.ATTRIBUTE_TYPE_INVALID)
    return out
