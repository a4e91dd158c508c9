"""fork() while another thread is loading a token's keys from KMS: the child, which keeps its
parent's sessions without calling C_Initialize, must not inherit a lock held for good
(docs/design.md, "Fork"), nor modules another thread was importing (docs/design.md,
"Fork during import")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import load_der_public_key
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


def harness_digest(n: int) -> bytes:
    """The digest p11harness signs for number n (soak_digest)."""
    return bytes((n * 31 + j) & 0xFF for j in range(32))


def verify_p256(public_der: bytes, signature: bytes, n: int) -> None:
    """CKM_ECDSA's r || s over harness_digest(n), checked by cryptography."""
    assert len(signature) == 64
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    key = load_der_public_key(public_der)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(utils.encode_dss_signature(r, s), harness_digest(n),
               ec.ECDSA(utils.Prehashed(hashes.SHA256())))


CHILDREN = 20


@pytest.mark.parametrize("child_mode", ["inherit", "init"])
@pytest.mark.parametrize("server", ["kms_server", "https_kms_server"])
def test_children_forked_during_the_first_load_all_sign(request, server, child_mode, harness,
                                                        module_path, tmp_path):
    """4 threads sign from the first token load on (Python imports aiobotocore, botocore, aiohttp
    on the module's loop thread); 20 children are forked 0, 50, ... 950 ms after they start, and
    each signs once, on the inherited session or after its own C_Initialize. Every child must sign;
    before the fix most children forked during the imports failed for good with ImportError."""
    kms = request.getfixturevalue(server)
    key = seed_key(kms.client(), None, "ECC_NIST_P256", "SIGN_VERIFY")
    config = write_config(tmp_path / "config.toml", kms,
                          f'[[token]]\nlabel = "fork"\nkeys = ["{key.arn}"]\n')
    out = tmp_path / "signatures"
    out.mkdir()
    env = {**os.environ, "PKCS11_KMS_CONFIG": config}
    # The first load lasts at least 1.5 s after the imports: most forks land inside it.
    kms.set_faults(latency_ms=1500, operations=["GetPublicKey"])
    try:
        proc = subprocess.run(
            [harness, module_path, "fork-sign", "4", str(CHILDREN), "50", child_mode, str(out)],
            env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    finally:
        kms.clear_faults()
    report = proc.stdout + proc.stderr[-4000:]
    assert proc.returncode == 0, report
    assert f"children ok={CHILDREN} of {CHILDREN}" in proc.stdout, report
    during = re.findall(r"^fork \d+ at_ms=\d+ loaded=0 ", proc.stdout, re.M)
    assert len(during) >= CHILDREN // 2, report  # the test reached the window it is about
    assert re.search(r"^parent signed=[1-9]\d* failed=0 ", proc.stdout, re.M), report
    for i in range(CHILDREN):
        verify_p256(key.public_der, (out / f"child-{i}.sig").read_bytes(), 1000 + i)


IMPORT_PROBE = """
import os, signal, sys, threading, time
sys.path.insert(0, os.environ["PKG_DIR"])
from pkcs11_kms import forking
forking._WAIT = 0.3  # the import below never ends in the parent: the fork waits this long
forking.import_deferred()  # what the fork would import first: now, so that it only waits
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
os.environ["READY_FD"], os.environ["GO_FD"] = str(ready_w), str(go_r)
importer = threading.Thread(target=__import__, args=("slowpkg",))
importer.start()
os.read(ready_r, 1)  # slowpkg is half executed, its thread blocked in os.read
half = sys.modules["slowpkg"]
started = time.monotonic()
pid = os.fork()
if pid == 0:
    signal.alarm(20)
    os.write(go_w, b"x")  # this child's own run of slowpkg's code must not block
    import slowpkg
    from slowpkg import done
    ok = slowpkg is half and slowpkg.last == 2 and slowpkg.done is done and done.VALUE == 3
    os._exit(0 if ok else 1)
waited = time.monotonic() - started
os.write(go_w, b"x")
importer.join(20)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status), "waited", round(waited, 1),
      "parent", sys.modules["slowpkg"].last)
"""


def test_child_forked_during_an_import_runs_the_module_again(tmp_path):
    """A Python host forks while another thread is inside `import slowpkg` for good: the fork waits
    at most forking._WAIT, then the child runs slowpkg's code again in the same module object;
    slowpkg.done, which had finished, is still its attribute."""
    pkg = tmp_path / "slowpkg"
    pkg.mkdir()
    (pkg / "done.py").write_text("VALUE = 3\n")
    (pkg / "__init__.py").write_text(
        "import os\nfrom . import done\nfirst = 1\n"
        "os.write(int(os.environ['READY_FD']), b'x')\n"
        "os.read(int(os.environ['GO_FD']), 1)\nlast = 2\n")
    env = {**os.environ, "PKG_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", IMPORT_PROBE], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.split() == ["child", "0", "waited", "0.3", "parent", "2"], (
        proc.stdout + proc.stderr)


@pytest.mark.parametrize("comes_back_half", [True, False])
def test_a_half_extension_is_made_anew_or_refused(monkeypatch, comes_back_half):
    """A C extension half initialised at fork: if its loader can only give back that half module
    (Cython's single-phase init puts it back in sys.modules), every import of it raises ImportError,
    so that packages fall back to their Python code; otherwise the new module is used."""
    import importlib
    import types
    from importlib.machinery import ModuleSpec

    from pkcs11_kms import forking

    half = types.ModuleType("halfext")

    class Loader:
        def create_module(self, spec):
            if not comes_back_half:
                return None
            sys.modules[spec.name] = half
            return half

        def exec_module(self, module):
            module.whole = True

    loader = Loader()

    class Finder:
        def find_spec(self, name, path=None, target=None):
            return ModuleSpec(name, loader) if name == "halfext" else None

    resume = forking._Resume()
    resume.extensions["halfext"] = half
    monkeypatch.setattr(sys, "meta_path", [resume, Finder(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "halfext", raising=False)
    if comes_back_half:
        for _ in range(2):
            with pytest.raises(ImportError, match="half initialised when the process forked"):
                importlib.import_module("halfext")
            assert "halfext" not in sys.modules
    else:
        module = importlib.import_module("halfext")
        assert module is not half and module.whole and module.__loader__ is loader
        monkeypatch.delitem(sys.modules, "halfext")
