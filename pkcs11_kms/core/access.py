"""Object access (PKCS#11 §5.7): finding objects and reading their attributes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..ck import CK_UNAVAILABLE_INFORMATION, CKA, CKR
from ..errors import PKCS11Error
from .attributes import pack
from .module import module
from .objects import TokenObject, new_handle
from .session import Session, session


def _visible(s: Session) -> list[TokenObject]:
    """What a session sees: private objects only while the user is logged in (PKCS#11 Usage Guide,
    "Permitted object accesses by sessions"). Only a copy made with CKA_PRIVATE true is private."""
    objects = s.token.visible_objects()
    if s.token.logged_in:
        return objects
    private = pack(CKA.PRIVATE, True)
    return [o for o in objects if o.attributes.get(CKA.PRIVATE) != private]


def _object(s: Session, handle: int) -> TokenObject:
    for o in _visible(s):
        if o.handle == handle:
            return o
    raise PKCS11Error(CKR.OBJECT_HANDLE_INVALID, f"no object {handle}")


def find_object(session_handle: int, handle: int) -> TokenObject:
    return _object(session(session_handle), handle)


def object_size(session_handle: int, handle: int) -> int:
    """C_GetObjectSize (§5.7): a KMS key takes no token memory that could be counted."""
    find_object(session_handle, handle)
    return CK_UNAVAILABLE_INFORMATION


def find_objects_init(session_handle: int, template: list[tuple[int, bytes]]) -> None:
    s = session(session_handle)
    if s.find is not None:
        raise PKCS11Error(CKR.OPERATION_ACTIVE, "a search is already active")
    s.find = [o.handle for o in _visible(s) if o.matches(template)]


def find_objects(session_handle: int, max_count: int, deliver: Callable[[list[int]], None]) -> None:
    """C_FindObjects: hands the next handles to `deliver` (which writes them to the host); the
    search moves past them only when that worked."""
    s = session(session_handle)
    if s.find is None:
        raise PKCS11Error(CKR.OPERATION_NOT_INITIALIZED, "no active search")
    found = s.find[:max_count]
    deliver(found)
    s.find = s.find[len(found):]


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


# What C_CopyObject's template may set on a copy; every other attribute is CKR_ATTRIBUTE_READ_ONLY.
COPY_SETTABLE = {CKA.TOKEN, CKA.LABEL, CKA.ID, CKA.PRIVATE, CKA.MODIFIABLE, CKA.DESTROYABLE,
                 CKA.COPYABLE}
COPY_BOOLEANS = COPY_SETTABLE - {CKA.LABEL, CKA.ID}  # CK_BBOOL: one byte, 0 or 1


def copy_object(session_handle: int, handle: int, template: list[tuple[int, bytes]]) -> int:
    """C_CopyObject (§5.7): a session object copy of a key or certificate, still backed by KMS.

    NSS's RSA TLS server copies the private key with an empty template; pkcs11-provider copies
    keys into session objects. A copy lives until its session closes or C_DestroyObject."""
    s = session(session_handle)
    original = _object(s, handle)
    if original.attributes.get(CKA.COPYABLE) != pack(CKA.COPYABLE, True):
        raise PKCS11Error(CKR.ACTION_PROHIBITED, f"object {handle} is not copyable")
    attributes = dict(original.attributes)
    attributes[CKA.TOKEN] = pack(CKA.TOKEN, False)
    attributes[CKA.DESTROYABLE] = pack(CKA.DESTROYABLE, True)
    for t, v in template:
        if t not in COPY_SETTABLE:
            raise PKCS11Error(CKR.ATTRIBUTE_READ_ONLY, f"attribute {t:#x} cannot change in a copy")
        if t in COPY_BOOLEANS and v not in (pack(t, False), pack(t, True)):
            raise PKCS11Error(CKR.ATTRIBUTE_VALUE_INVALID, f"attribute {t:#x} is a CK_BBOOL")
        if t == CKA.TOKEN and v != pack(CKA.TOKEN, False):
            raise PKCS11Error(CKR.TEMPLATE_INCONSISTENT, "copies are session objects: KMS keys "
                              "are not created through the module")
        attributes[t] = v
    if attributes.get(CKA.PRIVATE) == pack(CKA.PRIVATE, True) and not s.token.logged_in:
        raise PKCS11Error(CKR.USER_NOT_LOGGED_IN, "only public objects can be made before C_Login")
    copy = replace(original, handle=new_handle(), attributes=attributes)
    m = module()
    with m.lock:
        if m.sessions.get(s.handle) is not s:  # closed by another thread meanwhile
            raise PKCS11Error(CKR.SESSION_CLOSED, f"session {s.handle} closed meanwhile")
        s.token.session_objects[copy.handle] = (s.handle, copy)
    return copy.handle


def discard_copy(session_handle: int, handle: int) -> None:
    """Takes back a copy C_CopyObject could not hand to the host, destroyable or not."""
    s = session(session_handle)
    with module().lock:
        s.token.session_objects.pop(handle, None)


def destroy_object(session_handle: int, handle: int) -> None:
    """C_DestroyObject: session copies only; the KMS keys themselves are never deleted here.
    A copy made with CKA_DESTROYABLE false lives until its session closes (§5.7.3)."""
    s = session(session_handle)
    obj = _object(s, handle)
    if obj.attributes.get(CKA.DESTROYABLE) != pack(CKA.DESTROYABLE, True):
        raise PKCS11Error(CKR.ACTION_PROHIBITED, f"object {handle} is not destroyable")
    with module().lock:
        if s.token.session_objects.pop(handle, None) is None:
            raise PKCS11Error(CKR.ACTION_PROHIBITED, f"token object {obj.handle} is not destroyable")
