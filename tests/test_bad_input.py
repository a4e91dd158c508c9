"""Bad input from a C host (issue #10's first finds, from google/pkcs11test): never a crash.

- `C_Initialize` with `pReserved = (void *)1`: CKR_ARGUMENTS_BAD (a real string there is the
  config path libp11 and pkcs11-provider may pass; the module never dereferences a pointer that
  is not readable);
- `C_EncryptInit` with a garbage mechanism pointer before `C_Initialize`:
  CKR_CRYPTOKI_NOT_INITIALIZED, before any argument is read;
- and the module still initialises afterwards.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from hosts import run, tool

SOURCE = Path(__file__).parent / "harness" / "bad_init.c"


def test_wild_reserved_pointer_and_uninitialised_call(tmp_path, module_path, acceptance_config):
    host = tmp_path / "bad_init"
    subprocess.run([tool("gcc", "gcc"), "-Wall", "-Werror", "-o", str(host), str(SOURCE), "-ldl"],
                   check=True, timeout=60)
    proc = run([str(host), module_path], {**os.environ, "PKCS11_KMS_CONFIG": acceptance_config})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "C_EncryptInit(garbage) 0x190",      # CKR_CRYPTOKI_NOT_INITIALIZED
        "C_Initialize(pReserved=1) 0x7",     # CKR_ARGUMENTS_BAD
        "C_Initialize 0",
        "C_Finalize 0",
    ], proc.stdout
