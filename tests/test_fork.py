"""fork() while another thread is loading a token's keys from KMS: the child, which keeps its
parent's sessions without calling C_Initialize, must not inherit a lock held for good (DESIGN 3)."""

from __future__ import annotations

import os
import subprocess
import sys

from keyseed import seed_key, write_config

CHILD_PROBE = """
import os, sys, threading, time
sys.path.insert(0, os.environ["TESTS"])
import p11raw
ffi, lib = p11raw.load(os.environ["MODULE"])
assert lib.C_Initialize(ffi.NULL) == 0

def session():
    h = ffi.new("CK_SESSION_HANDLE *")
    assert lib.C_OpenSession(0, 4, ffi.NULL, ffi.NULL, h) == 0
    return h[0]

def find(s):
    out, n = ffi.new("CK_OBJECT_HANDLE[8]"), ffi.new("CK_ULONG *")
    assert lib.C_FindObjectsInit(s, ffi.NULL, 0) == 0  # loads the token's keys from KMS
    assert lib.C_FindObjects(s, out, 8, n) == 0
    lib.C_FindObjectsFinal(s)
    return n[0]

s = session()
loader = threading.Thread(target=find, args=(s,))
loader.start()
time.sleep(float(os.environ["FORK_AFTER"]))  # the load is waiting for KMS now
pid = os.fork()
if pid == 0:
    os._exit(0 if find(session()) == 2 else 1)
loader.join()
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


def test_child_forked_during_a_token_load_can_use_the_token(kms_server, module_path, tmp_path):
    key = seed_key(kms_server.client(), None, "ECC_NIST_P256", "SIGN_VERIFY")
    config = write_config(tmp_path / "config.toml", kms_server,
                          f'[[token]]\nlabel = "fork"\nkeys = ["{key.arn}"]\n')
    env = {**os.environ, "PKCS11_KMS_CONFIG": config, "MODULE": module_path,
           "TESTS": os.path.dirname(__file__), "FORK_AFTER": "1"}
    kms_server.set_faults(latency_ms=3000, operations=["GetPublicKey"])
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD_PROBE], env=env, capture_output=True,
                              text=True, timeout=90)
    finally:
        kms_server.clear_faults()
    assert proc.stdout.strip() == "child 0", proc.stdout + proc.stderr
