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
