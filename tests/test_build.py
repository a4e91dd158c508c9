"""The built library (docs/design.md, "The library"): what it exports, how it finds libpython,
and the build's refusal of a Python without a shared libpython."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

from hosts import tool

ROOT = Path(__file__).resolve().parent.parent


def function_names() -> set[str]:
    text = (ROOT / "cdefs" / "pkcs11_functions.h").read_text()
    return set(re.findall(r"^CK_RV (C_\w+)\(", text, re.M))


def test_exports_exactly_the_pkcs11_functions(module_path):
    out = subprocess.run([tool("nm", "binutils"), "-D", "--defined-only", module_path],
                         capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert exported == function_names()
    assert len(exported) == 92  # v3.0: 68 v2.40 functions, 24 new ones


def test_links_libpython_by_run_path_and_is_never_unloaded(module_path):
    out = subprocess.run([tool("readelf", "binutils"), "-d", module_path], capture_output=True,
                         text=True, check=True).stdout
    libpython = f"libpython{sysconfig.get_config_var('LDVERSION')}.so"
    assert re.search(rf"NEEDED.*\[{re.escape(libpython)}", out), out
    assert sysconfig.get_config_var("LIBDIR") in re.search(r"(RUNPATH|RPATH).*\[(.*)\]", out)[2]
    assert "NODELETE" in out  # hosts dlclose modules; the interpreter keeps pointers into ours


def test_build_refuses_a_python_without_shared_libpython():
    probe = (
        "import sys, sysconfig; sys.path.insert(0, sys.argv[1]); "
        "sysconfig.get_config_var = lambda name: None if name == 'Py_ENABLE_SHARED' else 'x'; "
        "import build_ffi; build_ffi.libpython_dir()"
    )
    proc = subprocess.run([sys.executable, "-c", probe, str(ROOT)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "needs a Python built with --enable-shared" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_builds_with_its_temporary_directory_on_another_file_system(tmp_path):
    """pip builds the library with the compiler's files under $TMPDIR, often a tmpfs (Debian 13's
    /tmp) while the package goes elsewhere: the finished library is copied, not renamed, across."""
    scratch = Path("/dev/shm")
    assert scratch.is_dir() and scratch.stat().st_dev != tmp_path.stat().st_dev, \
        "this test needs /dev/shm on another file system than the test's temporary directory"
    out = tmp_path / "lib"
    proc = subprocess.run([sys.executable, str(ROOT / "build_ffi.py"), str(out)], cwd=ROOT,
                          env={**os.environ, "TMPDIR": str(scratch)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (out / "libkms-pkcs11.so").is_file()
    assert [p.name for p in out.iterdir()] == ["libkms-pkcs11.so"]  # nothing staged left over
