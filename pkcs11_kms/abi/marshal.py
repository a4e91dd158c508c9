"""Pointers to Python values and back: strings, lists, templates and the two-call length convention."""

from __future__ import annotations

from collections.abc import Sequence

from _kms_pkcs11 import ffi

from ..ck import CK_UNAVAILABLE_INFORMATION, CKR
from ..errors import PKCS11Error

NULL = ffi.NULL


def require(*pointers: object) -> None:
    """CKR_ARGUMENTS_BAD for a NULL where the spec requires a pointer."""
    if any(p == NULL for p in pointers):
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "a required pointer is NULL")


def blank_padded(text: str, size: int) -> bytes:
    """Info strings are UTF-8, blank-padded, never NUL-terminated (§3.2)."""
    raw = text.encode("utf-8")[:size].decode("utf-8", "ignore").encode("utf-8")
    return raw + b" " * (size - len(raw))


def set_text(field, text: str, size: int) -> None:  # type: ignore[no-untyped-def]
    ffi.memmove(field, blank_padded(text, size), size)


def set_version(field, version: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    field.major, field.minor = version


def read_bytes(pointer, length: int) -> bytes:  # type: ignore[no-untyped-def]
    if length == 0:
        return b""
    require(pointer)
    return bytes(ffi.buffer(pointer, length))


def read_template(pointer, count: int) -> list[tuple[int, bytes]]:  # type: ignore[no-untyped-def]
    if count == 0:
        return []
    require(pointer)
    out = []
    for i in range(count):
        a = pointer[i]
        if a.pValue == NULL and a.ulValueLen:
            raise PKCS11Error(CKR.ARGUMENTS_BAD, "template attribute without a value")
        out.append((int(a.type), read_bytes(a.pValue, a.ulValueLen)))
    return out


def write_ulongs(values: Sequence[int], out, count_ptr) -> None:  # type: ignore[no-untyped-def]
    """The two-call convention for CK_ULONG arrays (§5.2): NULL asks for the count."""
    require(count_ptr)
    n = len(values)
    if out == NULL:
        count_ptr[0] = n
        return
    if count_ptr[0] < n:
        count_ptr[0] = n
        raise PKCS11Error(CKR.BUFFER_TOO_SMALL)
    for i, v in enumerate(values):
        out[i] = v
    count_ptr[0] = n


def write_bytes(data: bytes, out, length_ptr) -> None:  # type: ignore[no-untyped-def]
    """The two-call convention for byte outputs (§5.2)."""
    require(length_ptr)
    if out == NULL:
        length_ptr[0] = len(data)
        return
    if length_ptr[0] < len(data):
        length_ptr[0] = len(data)
        raise PKCS11Error(CKR.BUFFER_TOO_SMALL)
    ffi.memmove(out, data, len(data))
    length_ptr[0] = len(data)


def fill_attributes(template, count: int, values: Sequence[bytes | CKR]) -> CKR:  # type: ignore[no-untyped-def]
    """C_GetAttributeValue's five cases (§5.7): every attribute is processed, even after a failure."""
    rv = CKR.OK
    for i in range(count):
        a = template[i]
        value = values[i]
        if isinstance(value, CKR):
            a.ulValueLen = CK_UNAVAILABLE_INFORMATION
            rv = value
        elif a.pValue == NULL:
            a.ulValueLen = len(value)
        elif a.ulValueLen >= len(value):
            ffi.memmove(a.pValue, value, len(value))
            a.ulValueLen = len(value)
        else:
            a.ulValueLen = CK_UNAVAILABLE_INFORMATION
            rv = CKR.BUFFER_TOO_SMALL
    return rv
