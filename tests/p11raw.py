"""A raw PKCS#11 client for tests: the library's own C declarations, loaded with cffi's ABI mode."""

from __future__ import annotations

import re
from pathlib import Path

import cffi

CDEFS = Path(__file__).resolve().parent.parent / "cdefs"


def load(module_path: str):
    ffi = cffi.FFI()
    ffi.cdef((CDEFS / "pkcs11_types.h").read_text())
    prototypes = [
        line.split("/*")[0]
        for line in (CDEFS / "pkcs11_functions.h").read_text().splitlines()
        if re.match(r"^CK_RV C_\w+\(", line)
    ]
    ffi.cdef("\n".join(prototypes))
    return ffi, ffi.dlopen(module_path)


def read_attribute(ffi, lib, handle: int, attribute: int, slot: int = 0) -> bytes:
    """One attribute's raw value, read in a session of its own (for what python-pkcs11 cannot
    decode, such as CKA_PUBLIC_KEY_INFO or CKA_CERTIFICATE_CATEGORY)."""
    session = ffi.new("CK_SESSION_HANDLE *")
    assert lib.C_OpenSession(slot, 4, ffi.NULL, ffi.NULL, session) == 0  # CKF_SERIAL_SESSION
    try:
        t = ffi.new("CK_ATTRIBUTE *")
        t.type = attribute
        assert lib.C_GetAttributeValue(session[0], handle, t, 1) == 0
        buf = ffi.new("char[]", max(t.ulValueLen, 1))
        t.pValue = buf
        assert lib.C_GetAttributeValue(session[0], handle, t, 1) == 0
        return ffi.buffer(buf, t.ulValueLen)[:]
    finally:
        lib.C_CloseSession(session[0])
