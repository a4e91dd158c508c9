"""Object access (PKCS#11 §5.7): finding objects and reading their attributes."""

from __future__ import annotations

from dataclasses import replace

from ..ck import CKA, CKR
from ..errors import PKCS11Error
from .attributes import pack
from .module import module
from .objects import TokenObject, new_handle
from .session import Session, session


def _object(s: Session, handle: int) -> TokenObject:
    for o in s.token.visible_objects():
        if o.handle == handle:
            return o
    raise PKCS11Error(CKR.OBJECT_HANDLE_INVALID, f"no object {handle}")


def find_object(session_handle: int, handle: int) -> TokenObject:
    return _object(session(session_handle), handle)


def find_objects_init(session_handle: int, template: list[tuple[int, bytes]]) -> None:
    s = session(session_handle)
    if s.find is not None:
        raise PKCS11Error(CKR.OPERATION_ACTIVE, "a search is already active")
    s.find = [o.handle for o in s.token.visible_objects() if o.matches(template)]


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


# What C_CopyObject's template may set on a copy; every other attribute is CKR_ATTRIBUTE_READ_ONLY.
COPY_SETTABLE = {CKA.TOKEN, CKA.LABEL, CKA.ID, CKA.PRIVATE, CKA.MODIFIABLE, CKA.DESTROYABLE,
                 CKA.COPYABLE}


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
        if t == CKA.TOKEN and v != pack(CKA.TOKEN, False):
            raise PKCS11Error(CKR.TEMPLATE_INCONSISTENT, "copies are session objects: KMS keys "
                              "are not created through the module")
        attributes[t] = v
    copy = replace(original, handle=new_handle(), attributes=attributes)
    with module().lock:
        s.token.session_objects[copy.handle] = (s.handle, copy)
    return copy.handle


def destroy_object(session_handle: int, handle: int) -> None:
    """C_DestroyObject: session copies only; the KMS keys themselves are never deleted here."""
    s = session(session_handle)
    obj = _object(s, handle)
    with module().lock:
        if s.token.session_objects.pop(handle, None) is None:
            raise PKCS11Error(CKR.ACTION_PROHIBITED, f"token object {obj.handle} is not destroyable")
