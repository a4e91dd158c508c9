"""The PKCS#11 C types as the abi layer receives them from cffi: numbers arrive as int, pointers as
cdata.

Every C_* implementation names its parameters and their types exactly as its declaration in
cdefs/pkcs11_functions.h does (tests/test_types.py holds them to it), so the type checker follows a
host's arguments from the callback into the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from cffi import FFI

    CData: TypeAlias = FFI.CData  # a host pointer: only marshal.py reads or writes through one
else:
    CData = object  # cffi's class of it exists only once the first FFI instance does
Struct: TypeAlias = Any  # a local copy of a C structure: cffi resolves its fields at run time

CK_RV: TypeAlias = int
CK_ULONG: TypeAlias = int
CK_FLAGS: TypeAlias = int
CK_BBOOL: TypeAlias = int
CK_SLOT_ID: TypeAlias = int
CK_SESSION_HANDLE: TypeAlias = int
CK_OBJECT_HANDLE: TypeAlias = int
CK_MECHANISM_TYPE: TypeAlias = int
CK_USER_TYPE: TypeAlias = int

CK_VOID_PTR: TypeAlias = CData
CK_BYTE_PTR: TypeAlias = CData
CK_UTF8CHAR_PTR: TypeAlias = CData
CK_ULONG_PTR: TypeAlias = CData
CK_SLOT_ID_PTR: TypeAlias = CData
CK_SESSION_HANDLE_PTR: TypeAlias = CData
CK_OBJECT_HANDLE_PTR: TypeAlias = CData
CK_MECHANISM_TYPE_PTR: TypeAlias = CData
CK_MECHANISM_PTR: TypeAlias = CData
CK_ATTRIBUTE_PTR: TypeAlias = CData
CK_INFO_PTR: TypeAlias = CData
CK_SLOT_INFO_PTR: TypeAlias = CData
CK_TOKEN_INFO_PTR: TypeAlias = CData
CK_SESSION_INFO_PTR: TypeAlias = CData
CK_MECHANISM_INFO_PTR: TypeAlias = CData
CK_NOTIFY: TypeAlias = CData
