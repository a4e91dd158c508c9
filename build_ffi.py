"""Builds libkms-pkcs11.so with cffi's embedding mode from the declarations in cdefs/.

cdefs/pkcs11_functions.h is the one list of PKCS#11 functions: from it this file generates the
exported C entry points (each starts Python through a checked path, then calls its Python
callback), both function tables (v2.40 and v3.0) and the linker's export list.

Run directly (`python build_ffi.py [OUTPUT_DIR]`) or through `pip install .`.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CDEFS = HERE / "cdefs"
LIBRARY_NAME = "libkms-pkcs11.so"
CFFI_MODULE = "_kms_pkcs11"  # the embedded module the abi layer imports its ffi from

PROTOTYPE = re.compile(r"^CK_RV (C_\w+)\((.*)\);\s*(/\* C-ONLY \*/)?\s*$")

INIT_CODE = """
import signal  # while the C side can still restore the host's SIGINT (docs/design.md, "Signals")
import _ssl  # OpenSSL registers its exit cleanup now, before shim.c's kms_at_exit, which then runs first
import pkcs11_kms.hostsafe
pkcs11_kms.hostsafe.import_cryptography()  # before anything imports it: not with OPENSSL_CONF
import pkcs11_kms.abi.entry
"""


class Function:
    def __init__(self, name: str, params: str, c_only: bool) -> None:
        self.name = name
        self.params = params
        self.c_only = c_only
        self.arg_names = [p.strip().split()[-1] for p in params.split(",")]

    @property
    def callback(self) -> str:
        return "py_" + self.name


def read_functions() -> list[Function]:
    functions = []
    for line in (CDEFS / "pkcs11_functions.h").read_text().splitlines():
        m = PROTOTYPE.match(line)
        if m:
            functions.append(Function(m.group(1), m.group(2), bool(m.group(3))))
    if len(functions) != 92:
        raise SystemExit(f"cdefs/pkcs11_functions.h: expected 92 functions, found {len(functions)}")
    return functions


def cdef(functions: list[Function]) -> str:
    types = (CDEFS / "pkcs11_types.h").read_text()
    callbacks = "\n".join(
        f'extern "Python" CK_RV {f.callback}({f.params});' for f in functions if not f.c_only
    )
    return (types + "\n" + callbacks + "\nvoid kms_mark_module_thread(void);\n"
            "long kms_read_c_string(const void *p, char *out, long max);\n"
            "int kms_copy_in(void *dst, const void *src, size_t n);\n"
            "int kms_copy_out(void *dst, const void *src, size_t n);\n"
            "int kms_exiting(void);\n")


def c_source(functions: list[Function]) -> str:
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    parts = [
        f'#define KMS_PY_EXECUTABLE "{c_escape(python_executable())}"',
        f'#define KMS_PY_VERSION "{python_version}"',
        f"#define KMS_PYTHON_HOST_SOURCE {c_string(python_host_source())}",
        '#define KMS_EXPORT __attribute__((visibility("default")))',
        (CDEFS / "pkcs11_types.h").read_text(),
        "/* Python callbacks (defined by cffi below). */",
    ]
    parts += [f"static CK_RV {f.callback}({f.params});" for f in functions if not f.c_only]
    parts.append("/* Exported entry points. */")
    parts += [f"KMS_EXPORT CK_RV {f.name}({f.params});" for f in functions]
    parts.append(function_table("kms_function_list_2_40", functions[:68], (2, 40)))
    parts.append(function_table("kms_function_list_3_0", functions, (3, 0)))
    parts.append((CDEFS / "shim.c").read_text())
    for f in functions:
        if f.c_only:
            continue
        args = ", ".join(f.arg_names)
        parts.append(
            f"KMS_EXPORT CK_RV {f.name}({f.params})\n{{\n"
            f"    CK_RV rv;\n"
            f"    if (kms_inside)\n        return kms_refuse_reentry(\"{f.name}\");\n"
            f"    kms_inside = 1;\n"
            f"    rv = kms_start() != 0 ? 0x5UL /* CKR_GENERAL_ERROR */ : {f.callback}({args});\n"
            f"    kms_inside = 0;\n"
            f"    return rv;\n}}"
        )
    return "\n".join(parts) + "\n"


def function_table(name: str, functions: list[Function], version: tuple[int, int]) -> str:
    fields = "\n".join(f"    CK_RV (*{f.name})({f.params});" for f in functions)
    values = ",\n".join(f"    {f.name}" for f in functions)
    return (
        f"static struct {{\n    CK_VERSION version;\n{fields}\n}} {name} = {{\n"
        f"    {{{version[0]}, {version[1]}}},\n{values}\n}};"
    )


def version_script(functions: list[Function], path: Path) -> None:
    names = "".join(f"        {f.name};\n" for f in functions)
    path.write_text(f"{{\n    global:\n{names}    local: *;\n}};\n")


def c_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def c_string(text: str) -> str:
    """A C string literal of `text`, one source line per line."""
    return "\\\n".join(f'"{c_escape(line)}\\n"' for line in text.splitlines())


def python_host_source() -> str:
    """abi/python_host.py, then the call the C shim reads PROBLEM from, with the site directories
    of the environment the module is built in."""
    source = (HERE / "pkcs11_kms" / "abi" / "python_host.py").read_text()
    return source + f"\nPROBLEM = run(LIBRARY, {site.getsitepackages()!r})\n"


def python_executable() -> str:
    """The interpreter (venv) the module must run: the one building it, unless overridden."""
    return os.environ.get("PKCS11_KMS_PYTHON") or sys.executable


def libpython_dir() -> str:
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise SystemExit(
            "pkcs11-kms needs a Python built with --enable-shared (a shared libpython): "
            f"{sys.executable} has none. Use Debian's python3, or pyenv with "
            'PYTHON_CONFIGURE_OPTS="--enable-shared".'
        )
    return sysconfig.get_config_var("LIBDIR")


def make_ffi(functions: list[Function], export_list: Path):
    import cffi

    libdir = libpython_dir()
    pylib = "python" + sysconfig.get_config_var("LDVERSION")
    ffi = cffi.FFI()
    ffi.cdef(cdef(functions))
    ffi.embedding_init_code(INIT_CODE)
    ffi.set_source(
        CFFI_MODULE,
        c_source(functions),
        libraries=[pylib, "dl", "pthread"],
        library_dirs=[libdir],
        extra_compile_args=["-fvisibility=hidden"],
        extra_link_args=[
            f"-Wl,-rpath,{libdir}",
            "-Wl,-z,nodelete",
            "-Wl,-Bsymbolic-functions",
            f"-Wl,--version-script={export_list}",
        ],
    )
    return ffi


def build(output_dir: Path) -> Path:
    """Compiles the library into output_dir and returns its path."""
    functions = read_functions()
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kms-pkcs11-build-") as tmp:
        export_list = Path(tmp) / "exports.map"
        version_script(functions, export_list)
        ffi = make_ffi(functions, export_list)
        built = Path(ffi.compile(tmpdir=tmp, target="libkms-pkcs11.*", verbose=False))
        target = output_dir / LIBRARY_NAME
        # Copied next to the target, then renamed over it: the temporary directory may be on
        # another file system (a tmpfs /tmp, Debian 13's default), and a process that has the old
        # library loaded keeps its own file.
        staged = output_dir / f".{LIBRARY_NAME}.{os.getpid()}"
        try:
            shutil.copyfile(built, staged)
            os.chmod(staged, 0o755)
            os.replace(staged, target)
        finally:
            staged.unlink(missing_ok=True)
    return target


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "pkcs11_kms"
    print(build(out))
