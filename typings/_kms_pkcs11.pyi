# The module build_ffi.py embeds in libkms-pkcs11.so (cffi's embedding mode): the stub the type
# checker reads for it. `lib` holds the py_C_* callbacks (attached by abi/entry.py) and shim.c's
# helpers below (build_ffi.py's cdef() declares them).
from typing import Any

from cffi import FFI

ffi: FFI

class _Lib:
    def kms_mark_module_thread(self) -> None: ...
    def kms_read_c_string(self, p: FFI.CData, out: FFI.CData, max: int) -> int: ...
    def kms_copy_in(self, dst: FFI.CData, src: FFI.CData, n: int) -> int: ...
    def kms_copy_out(self, dst: FFI.CData, src: FFI.CData | bytes, n: int) -> int: ...
    def kms_exiting(self) -> int: ...
    def __getattr__(self, name: str) -> Any: ...  # py_C_*

lib: _Lib
