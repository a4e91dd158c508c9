"""Host pointers to Python values and back: strings, lists, templates, the two-call convention.

No host pointer is ever dereferenced here (docs/design.md, "Host pointers"): every read goes
through kms_copy_in and every write through kms_copy_out (cdefs/shim.c), which answer -1 for an
unreadable or unwritable address; that is CKR_ARGUMENTS_BAD. Structures are copied in, worked on
as a local copy, and copied out. Lengths are capped before anything is allocated for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from _kms_pkcs11 import ffi, lib

from ..ck import CK_UNAVAILABLE_INFORMATION, CKR
from ..errors import PKCS11Error
from .cdata import CData, Struct

NULL = ffi.NULL

# The largest inputs one call takes (docs/design.md, "Host pointers"): larger lengths fail before
# any allocation, with the function's length error.
MAX_DATA = 64 * 1024 * 1024  # data to sign, verify, encrypt, decrypt or digest in one call
MAX_ATTRIBUTE = 1024 * 1024  # one template value (a certificate is a few kB)
MAX_TEMPLATE = 4096  # attributes in one template
MAX_PARAMETER = 64 * 1024  # a mechanism parameter
MAX_HANDLES = 1 << 20  # object handles asked for in one C_FindObjects

ULONG_SIZE = ffi.sizeof("CK_ULONG")


def bad(why: str) -> PKCS11Error:
    return PKCS11Error(CKR.ARGUMENTS_BAD, why)


def require(*pointers: object) -> None:
    """CKR_ARGUMENTS_BAD for a NULL where the spec requires a pointer."""
    if any(p == NULL for p in pointers):
        raise bad("a required pointer is NULL")


def copy_in(local: CData, pointer: CData, size: int) -> None:
    """Copies `size` bytes at the host's `pointer` into our `local` cdata."""
    if size and lib.kms_copy_in(local, pointer, size) != 0:
        raise bad("an input pointer is not readable")


def copy_out(pointer: CData, local: CData | bytes, size: int) -> None:
    """Copies `size` bytes of our `local` cdata (or bytes) to the host's `pointer`."""
    if size and lib.kms_copy_out(pointer, local, size) != 0:
        raise bad("an output pointer is not writable")


def new_struct(ctype: str, init: object = None) -> Struct:
    """A local `ctype *`, zeroed or initialised from `init`."""
    return ffi.new(ctype + " *", init)


def read_struct(pointer: CData, ctype: str) -> Struct:
    """A local copy of the `ctype` structure at `pointer` (a `ctype *`)."""
    require(pointer)
    local = new_struct(ctype)
    copy_in(local, pointer, ffi.sizeof(ctype))
    return local


def write_struct(pointer: CData, local: Struct) -> None:
    require(pointer)
    copy_out(pointer, local, ffi.sizeof(local[0]))


def read_ulong(pointer: CData) -> int:
    return int(read_struct(pointer, "CK_ULONG")[0])


def write_ulong(pointer: CData, value: int) -> None:
    require(pointer)
    copy_out(pointer, ffi.new("CK_ULONG *", value), ULONG_SIZE)


def read_bytes(pointer: CData, length: int, limit: int = MAX_DATA,
               too_long: CKR = CKR.DATA_LEN_RANGE) -> bytes:
    if length == 0:
        return b""
    if length > limit:
        raise PKCS11Error(too_long, f"{length} bytes, more than {limit}")
    require(pointer)
    local = ffi.new("char[]", length)
    copy_in(local, pointer, length)
    return read_local(local, length)


def read_local(local: CData, length: int) -> bytes:
    """The first `length` bytes of our own `char[]`."""
    return cast(bytes, ffi.unpack(local, length))


def write_data(pointer: CData, data: bytes | bytearray) -> None:
    if data:
        copy_out(pointer, ffi.from_buffer(data), len(data))


def blank_padded(text: str, size: int) -> bytes:
    """Info strings are UTF-8, blank-padded, never NUL-terminated (§3.2)."""
    raw = text.encode("utf-8")[:size].decode("utf-8", "ignore").encode("utf-8")
    return raw + b" " * (size - len(raw))


def set_text(field: Struct, text: str, size: int) -> None:
    """Fills a field of a local structure."""
    ffi.memmove(field, blank_padded(text, size), size)


def set_version(field: Struct, version: tuple[int, int]) -> None:
    field.major, field.minor = version


def read_template_array(pointer: CData, count: int) -> Struct:
    """A local copy of `count` CK_ATTRIBUTEs (their values stay in the host)."""
    if count > MAX_TEMPLATE:
        raise bad(f"{count} attributes")
    require(pointer)
    local = ffi.new("CK_ATTRIBUTE[]", count)
    copy_in(local, pointer, ffi.sizeof(local))
    return local


def read_template(pointer: CData, count: int) -> list[tuple[int, bytes]]:
    if count == 0:
        return []
    out = []
    for a in read_template_array(pointer, count):
        if a.pValue == NULL and a.ulValueLen:
            raise bad("template attribute without a value")
        value = read_bytes(a.pValue, int(a.ulValueLen), MAX_ATTRIBUTE, CKR.ATTRIBUTE_VALUE_INVALID)
        out.append((int(a.type), value))
    return out


def write_ulongs(values: Sequence[int], out: CData, count_ptr: CData) -> None:
    """The two-call convention for CK_ULONG arrays (§5.2): NULL asks for the count."""
    require(count_ptr)
    n = len(values)
    if out != NULL:
        if read_ulong(count_ptr) < n:
            write_ulong(count_ptr, n)
            raise PKCS11Error(CKR.BUFFER_TOO_SMALL)
        if n:
            copy_out(out, ffi.new("CK_ULONG[]", list(values)), n * ULONG_SIZE)
    write_ulong(count_ptr, n)


def output_capacity(out: CData, length_ptr: CData) -> int | None:
    """A producing call's buffer size; None when `out` is NULL (the caller asks for the length)."""
    require(length_ptr)
    return None if out == NULL else read_ulong(length_ptr)


def fill_attributes(pointer: CData, template: Struct, values: Sequence[bytes | CKR]) -> CKR:
    """C_GetAttributeValue's five cases (§5.7) on the local `template`, copied back to `pointer`:
    every attribute is processed, even after a failure."""
    rv = CKR.OK
    for a, value in zip(template, values):
        if isinstance(value, CKR):
            a.ulValueLen = CK_UNAVAILABLE_INFORMATION
            rv = value
        elif a.pValue == NULL:
            a.ulValueLen = len(value)
        elif a.ulValueLen >= len(value):
            write_data(a.pValue, value)
            a.ulValueLen = len(value)
        else:
            a.ulValueLen = CK_UNAVAILABLE_INFORMATION
            rv = CKR.BUFFER_TOO_SMALL
    copy_out(pointer, template, ffi.sizeof(template))
    return rv
