"""Every PKCS#11 function answers only with codes from its allowed set (core/returns.py), never
dereferences a host pointer that cannot be one, and tells of KMS failures in ulDeviceError.

Each case runs in a subprocess of its own driving the real library through raw cffi (p11raw), so
a crash fails the case (its exit status) instead of the test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keyseed import write_config
from pkcs11_kms.ck import CKR
from pkcs11_kms.core.returns import ALLOWED, allowed
from pkcs11_kms.kms.errors import ERROR_TABLE

TESTS = Path(__file__).resolve().parent

# Runs in the subprocess: the library, helpers, and wild pointers of every kind Google's
# pkcs11test and fuzzers pass (NULL, small integers, 0xdeadbeef, -1, an unmapped page, a page
# that is mapped but unreadable).
PRELUDE = r"""
import ctypes, mmap, os, sys
sys.path.insert(0, os.environ["TESTS"])
import p11raw
ffi, lib = p11raw.load(os.environ["MODULE"])

def say(name, rv):
    print(name, hex(rv), flush=True)

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
unmapped = libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_WRITE,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
assert libc.munmap(unmapped, 4096) == 0
unreadable = libc.mmap(None, 4096, 0,  # PROT_NONE
                       mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
WILD = [("1", 1), ("deadbeef", 0xdeadbeef), ("minus1", (1 << 64) - 1), ("unmapped", unmapped),
        ("unreadable", unreadable)]

def wild(ctype, address):
    return ffi.cast(ctype, address)

ULONG_MAX = (1 << 64) - 1
assert lib.C_Initialize(ffi.NULL) == 0
h = ffi.new("CK_SESSION_HANDLE *")
assert lib.C_OpenSession(0, 4, ffi.NULL, ffi.NULL, h) == 0  # CKF_SERIAL_SESSION
s = h[0]

def find(label, cls=3):  # CKO_PRIVATE_KEY
    t = ffi.new("CK_ATTRIBUTE[2]")
    c = ffi.new("CK_ULONG *", cls)
    name = ffi.new("char[]", label.encode())
    t[0].type, t[0].pValue, t[0].ulValueLen = 0, c, 8  # CKA_CLASS
    t[1].type, t[1].pValue, t[1].ulValueLen = 3, name, len(label)  # CKA_LABEL
    assert lib.C_FindObjectsInit(s, t, 2) == 0
    out, n = ffi.new("CK_OBJECT_HANDLE *"), ffi.new("CK_ULONG *")
    assert lib.C_FindObjects(s, out, 1, n) == 0
    lib.C_FindObjectsFinal(s)
    return out[0] if n[0] else None

def mechanism(m):
    p = ffi.new("CK_MECHANISM *")
    p.mechanism = m
    return p

def device_error():
    info = ffi.new("CK_SESSION_INFO *")
    assert lib.C_GetSessionInfo(s, info) == 0
    return info.ulDeviceError

CKM_ECDSA_SHA256 = 0x1044
"""


def run_case(snippet: str, env: dict[str, str], timeout: float = 90) -> list[tuple[str, int]]:
    proc = subprocess.run([sys.executable, "-c", PRELUDE + snippet], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    answers = []
    for line in proc.stdout.splitlines():
        name, rv = line.split()
        answers.append((name, int(rv, 16)))
    assert answers, proc.stderr
    return answers


def function_of(label: str) -> str:
    return label.split(":")[0]


def check(answers: list[tuple[str, int]], expected: dict[str, int]) -> None:
    """Every answer is in its function's allowed set; the labelled ones are exactly as expected."""
    got = dict(answers)
    for label, rv in answers:
        assert rv in allowed(function_of(label)), f"{label} returned {rv:#x}, not allowed"
    for label, rv in expected.items():
        assert got.get(label) == rv, f"{label}: {got.get(label, 'missing')!r} != {rv:#x}"


@pytest.fixture(scope="module")
def env(module_path, kms_server, seeded, tmp_path_factory):
    path = tmp_path_factory.mktemp("returns") / "config.toml"
    config = write_config(path, kms_server, '[[token]]\nlabel = "returns"\nkeys = ['
                          f'{{ key = "{seeded["ec-sign"].arn}", label = "ec-sign" }}, '
                          f'{{ key = "{seeded["web-tls"].arn}", label = "web-tls" }}]\n')
    return {**os.environ, "PKCS11_KMS_CONFIG": config, "MODULE": module_path, "TESTS": str(TESTS)}


BAD = int(CKR.ARGUMENTS_BAD)
OK = int(CKR.OK)
WILDS = ("1", "deadbeef", "minus1", "unmapped", "unreadable")  # the names PRELUDE gives them


def test_table_covers_every_function():
    names = [line.split("(")[0].split()[-1] for line in
             (TESTS.parent / "cdefs" / "pkcs11_functions.h").read_text().splitlines()
             if line.startswith("CK_RV C_")]
    assert sorted(names) == sorted(ALLOWED) and len(names) == 92
    for name in names:
        assert {CKR.OK, CKR.GENERAL_ERROR, CKR.HOST_MEMORY, CKR.FUNCTION_FAILED} <= ALLOWED[name]
    assert CKR.KEY_FUNCTION_NOT_PERMITTED not in ALLOWED["C_Sign"]
    assert CKR.KEY_FUNCTION_NOT_PERMITTED in ALLOWED["C_SignInit"]
    assert CKR.DEVICE_ERROR not in ALLOWED["C_GetSlotList"]


def test_wild_info_pointers(env):
    answers = run_case(r"""
for name, address in WILD:
    say(f"C_GetInfo:{name}", lib.C_GetInfo(wild("CK_INFO *", address)))
    say(f"C_GetSlotInfo:{name}", lib.C_GetSlotInfo(0, wild("CK_SLOT_INFO *", address)))
    say(f"C_GetTokenInfo:{name}", lib.C_GetTokenInfo(0, wild("CK_TOKEN_INFO *", address)))
    say(f"C_GetSessionInfo:{name}", lib.C_GetSessionInfo(s, wild("CK_SESSION_INFO *", address)))
    say(f"C_GetMechanismInfo:{name}",
        lib.C_GetMechanismInfo(0, CKM_ECDSA_SHA256, wild("CK_MECHANISM_INFO *", address)))
say("C_GetInfo:NULL", lib.C_GetInfo(ffi.NULL))
info = ffi.new("CK_INFO *")
say("C_GetInfo:valid", lib.C_GetInfo(info))
assert info.cryptokiVersion.major in (2, 3)
""", env)
    expected = {f"{f}:{w}": BAD for f in ("C_GetInfo", "C_GetSlotInfo", "C_GetTokenInfo",
                                         "C_GetSessionInfo", "C_GetMechanismInfo")
                for w in WILDS}
    check(answers, {**expected, "C_GetInfo:NULL": BAD, "C_GetInfo:valid": OK})


def test_wild_slot_list_and_open_session(env):
    answers = run_case(r"""
n = ffi.new("CK_ULONG *")
for name, address in WILD:
    say(f"C_GetSlotList:count-{name}", lib.C_GetSlotList(0, ffi.NULL, wild("CK_ULONG *", address)))
    n[0] = 64
    say(f"C_GetSlotList:list-{name}", lib.C_GetSlotList(0, wild("CK_SLOT_ID *", address), n))
    n[0] = 64
    say(f"C_GetMechanismList:{name}",
        lib.C_GetMechanismList(0, wild("CK_MECHANISM_TYPE *", address), n))
    say(f"C_OpenSession:{name}",
        lib.C_OpenSession(0, 4, ffi.NULL, ffi.NULL, wild("CK_SESSION_HANDLE *", address)))
slots = ffi.new("CK_SLOT_ID[8]")
n[0] = 8
say("C_GetSlotList:valid", lib.C_GetSlotList(0, slots, n))
assert n[0] == 1
say("C_OpenSession:valid", lib.C_OpenSession(0, 4, ffi.NULL, ffi.NULL, h))
token = ffi.new("CK_TOKEN_INFO *")
assert lib.C_GetTokenInfo(0, token) == 0
say("C_GetTokenInfo:sessions", token.ulSessionCount)  # only the two valid opens
""", env)
    expected = {f"{f}{w}": BAD for w in WILDS for f in (
        "C_GetSlotList:count-", "C_GetSlotList:list-", "C_OpenSession:", "C_GetMechanismList:")}
    got = dict(answers)
    assert got.pop("C_GetTokenInfo:sessions") == 2  # a wild phSession leaves no session behind
    check([(k, v) for k, v in answers if k != "C_GetTokenInfo:sessions"],
          {**expected, "C_GetSlotList:valid": OK, "C_OpenSession:valid": OK})


def test_wild_sign_data_lengths_and_outputs(env):
    answers = run_case(r"""
k = find("ec-sign")
assert k is not None
data = ffi.new("unsigned char[32]")
sig, n = ffi.new("unsigned char[64]"), ffi.new("CK_ULONG *", 64)

def again():
    assert lib.C_SignInit(s, mechanism(0x1041), k) == 0  # CKM_ECDSA

for name, address in WILD:
    again()
    say(f"C_Sign:data-{name}", lib.C_Sign(s, wild("CK_BYTE *", address), 32, sig, n))
    again()
    n[0] = 64
    say(f"C_Sign:signature-{name}", lib.C_Sign(s, data, 32, wild("CK_BYTE *", address), n))
    again()
    say(f"C_Sign:length-{name}", lib.C_Sign(s, data, 32, sig, wild("CK_ULONG *", address)))
for name, length in (("ULONG_MAX", ULONG_MAX), ("2^40", 1 << 40), ("2^32", 1 << 32)):
    again()
    say(f"C_Sign:huge-{name}", lib.C_Sign(s, data, length, sig, n))
    again()
    say(f"C_SignUpdate:huge-{name}", lib.C_SignUpdate(s, data, length))
    lib.C_SignInit(s, ffi.NULL, 0)
# the session handle is checked before any pointer is read
say("C_Sign:bad-session", lib.C_Sign(s + 1000, wild("CK_BYTE *", 1), 32, sig, n))
say("C_Verify:bad-session",
    lib.C_Verify(s + 1000, wild("CK_BYTE *", 1), 32, wild("CK_BYTE *", 1), 64))
again()
n[0] = 64
say("C_Sign:valid", lib.C_Sign(s, data, 32, sig, n))
assert n[0] == 64
""", env)
    expected = {f"C_Sign:{what}-{w}": BAD
                for what in ("data", "signature", "length") for w in WILDS}
    expected.update({"C_Sign:bad-session": int(CKR.SESSION_HANDLE_INVALID),
                     "C_Verify:bad-session": int(CKR.SESSION_HANDLE_INVALID),
                     "C_Sign:valid": OK})
    check(answers, expected)
    got = dict(answers)
    for name in ("ULONG_MAX", "2^40", "2^32"):  # a length error, never an allocation of it
        assert got[f"C_Sign:huge-{name}"] in (BAD, CKR.DATA_LEN_RANGE)
        assert got[f"C_SignUpdate:huge-{name}"] in (BAD, CKR.DATA_LEN_RANGE)


def test_wild_templates(env):
    answers = run_case(r"""
k = find("ec-sign")
for name, address in WILD:
    say(f"C_GetAttributeValue:array-{name}",
        lib.C_GetAttributeValue(s, k, wild("CK_ATTRIBUTE *", address), 1))
    t = ffi.new("CK_ATTRIBUTE *")
    t.type, t.pValue, t.ulValueLen = 3, wild("void *", address), 64  # CKA_LABEL into a wild buffer
    say(f"C_GetAttributeValue:value-{name}", lib.C_GetAttributeValue(s, k, t, 1))
    say(f"C_FindObjectsInit:array-{name}",
        lib.C_FindObjectsInit(s, wild("CK_ATTRIBUTE *", address), 1))
    t.ulValueLen = 8
    say(f"C_FindObjectsInit:value-{name}", lib.C_FindObjectsInit(s, t, 1))
t = ffi.new("CK_ATTRIBUTE *")
buf = ffi.new("char[8]")
t.type, t.pValue, t.ulValueLen = 3, buf, 1 << 40
say("C_FindObjectsInit:huge-value", lib.C_FindObjectsInit(s, t, 1))
say("C_FindObjectsInit:huge-count", lib.C_FindObjectsInit(s, t, ULONG_MAX))
label = ffi.new("char[64]")
t.type, t.pValue, t.ulValueLen = 3, label, 64
say("C_GetAttributeValue:valid", lib.C_GetAttributeValue(s, k, t, 1))
assert ffi.buffer(label, t.ulValueLen)[:] == b"ec-sign", ffi.buffer(label, t.ulValueLen)[:]
say("C_FindObjectsInit:valid", lib.C_FindObjectsInit(s, ffi.NULL, 0))
""", env)
    expected = {f"{f}:{what}-{w}": BAD for f in ("C_GetAttributeValue", "C_FindObjectsInit")
                for what in ("array", "value") for w in WILDS}
    expected.update({"C_FindObjectsInit:huge-value": int(CKR.ATTRIBUTE_VALUE_INVALID),
                     "C_FindObjectsInit:huge-count": BAD,
                     "C_GetAttributeValue:valid": OK, "C_FindObjectsInit:valid": OK})
    check(answers, expected)


def test_an_output_that_cannot_be_written_changes_nothing(env):
    """C_FindObjects into a wild array keeps the search where it was; C_CopyObject into a wild
    handle leaves no copy behind, even one made with CKA_DESTROYABLE false."""
    answers = run_case(r"""
def search():
    assert lib.C_FindObjectsInit(s, ffi.NULL, 0) == 0
    out, n = ffi.new("CK_OBJECT_HANDLE[64]"), ffi.new("CK_ULONG *")
    assert lib.C_FindObjects(s, out, 64, n) == 0
    assert lib.C_FindObjectsFinal(s) == 0
    return sorted(out[i] for i in range(n[0]))

before = search()
assert lib.C_FindObjectsInit(s, ffi.NULL, 0) == 0
n = ffi.new("CK_ULONG *")
for name, address in WILD:
    say(f"C_FindObjects:out-{name}", lib.C_FindObjects(s, wild("CK_OBJECT_HANDLE *", address), 64, n))
out = ffi.new("CK_OBJECT_HANDLE[64]")
say("C_FindObjects:valid", lib.C_FindObjects(s, out, 64, n))
assert sorted(out[i] for i in range(n[0])) == before, (list(out)[:n[0]], before)
lib.C_FindObjectsFinal(s)
k = find("ec-sign")
t = ffi.new("CK_ATTRIBUTE *")
false = ffi.new("CK_BBOOL *", 0)
t.type, t.pValue, t.ulValueLen = 0x172, false, 1  # CKA_DESTROYABLE
for name, address in WILD:
    say(f"C_CopyObject:out-{name}", lib.C_CopyObject(s, k, t, 1, wild("CK_OBJECT_HANDLE *", address)))
assert search() == before
""", env)
    expected = {f"{f}:out-{w}": BAD for f in ("C_FindObjects", "C_CopyObject") for w in WILDS}
    expected["C_FindObjects:valid"] = OK
    check(answers, expected)


def test_wild_mechanisms(env):
    answers = run_case(r"""
k = find("web-tls")
assert k is not None
for name, address in WILD:
    say(f"C_SignInit:mechanism-{name}", lib.C_SignInit(s, wild("CK_MECHANISM *", address), k))
    m = mechanism(0x43)  # CKM_SHA256_RSA_PKCS_PSS
    m.pParameter, m.ulParameterLen = wild("void *", address), ffi.sizeof("CK_RSA_PKCS_PSS_PARAMS")
    say(f"C_SignInit:parameter-{name}", lib.C_SignInit(s, m, k))
    m = mechanism(0x40)  # CKM_SHA256_RSA_PKCS: a parameter it does not take, unreadable
    m.pParameter, m.ulParameterLen = wild("void *", address), 16
    say(f"C_SignInit:other-{name}", lib.C_SignInit(s, m, k))
    lib.C_SignInit(s, ffi.NULL, 0)
m = mechanism(0x40)
m.pParameter, m.ulParameterLen = ffi.new("char[8]"), 1 << 40
say("C_SignInit:huge-parameter", lib.C_SignInit(s, m, k))
lib.C_SignInit(s, ffi.NULL, 0)
say("C_SignInit:valid", lib.C_SignInit(s, mechanism(0x40), k))
""", env)
    expected = {f"C_SignInit:{what}-{w}": BAD for what in ("mechanism", "parameter") for w in WILDS}
    expected.update({"C_SignInit:huge-parameter": int(CKR.MECHANISM_PARAM_INVALID),
                     "C_SignInit:valid": OK})
    check(answers, expected)
    got = dict(answers)
    for w in WILDS:  # an unreadable parameter the mechanism does not take: bad either way
        assert got[f"C_SignInit:other-{w}"] in (BAD, CKR.MECHANISM_PARAM_INVALID)


# ---- KMS faults: codes in the function's set, the KMS error's number in ulDeviceError ----

@pytest.fixture
def faults(kms_server):
    yield kms_server
    kms_server.clear_faults()


@pytest.fixture(scope="module")
def listing_env(env, kms_server, seeded, tmp_path_factory):
    """One token per listed key: C_GetSlotList is what calls ListKeys."""
    path = tmp_path_factory.mktemp("listing") / "config.toml"
    return {**env, "PKCS11_KMS_CONFIG": write_config(
        path, kms_server, 'max_attempts = 1\n[[token]]\ntoken_per_key = true\n')}


@pytest.fixture(scope="module")
def fault_env(env, kms_server, seeded, tmp_path_factory):
    path = tmp_path_factory.mktemp("fault") / "config.toml"
    return {**env, "PKCS11_KMS_CONFIG": write_config(
        path, kms_server, 'max_attempts = 1\nconnect_timeout = 2\nread_timeout = 5\n'
        'key_cache = false\n'  # each case reads its keys from KMS (GetPublicKey faults)
        '[[token]]\nlabel = "faults"\n'
        f'keys = [{{ key = "{seeded["ec-sign"].arn}", label = "ec-sign" }}]\n')}


LIST_SLOTS = r"""
import os, sys
sys.path.insert(0, os.environ["TESTS"])
import p11raw
ffi, lib = p11raw.load(os.environ["MODULE"])
def say(name, rv):
    print(name, hex(rv), flush=True)
assert lib.C_Initialize(ffi.NULL) == 0
n = ffi.new("CK_ULONG *")
say("C_GetSlotList:fault", lib.C_GetSlotList(0, ffi.NULL, n))
say("C_GetSlotInfo:fault", lib.C_GetSlotInfo(0, ffi.new("CK_SLOT_INFO *")))
"""


@pytest.mark.parametrize("fault", [{"error_code": "AccessDeniedException"}, {"http_status": 503}])
def test_list_keys_fault_gives_a_slot_list_code(listing_env, faults, fault):
    faults.set_faults(operations=["ListKeys"], **fault)
    proc = subprocess.run([sys.executable, "-c", LIST_SLOTS], env=listing_env,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    answers = [(line.split()[0], int(line.split()[1], 16)) for line in proc.stdout.splitlines()]
    # Neither CKR_KEY_FUNCTION_NOT_PERMITTED nor CKR_DEVICE_ERROR is C_GetSlotList's to return.
    check(answers, {"C_GetSlotList:fault": int(CKR.FUNCTION_FAILED)})
    got = dict(answers)
    assert got["C_GetSlotInfo:fault"] in (CKR.FUNCTION_FAILED, CKR.DEVICE_ERROR)


@pytest.mark.parametrize("fault, rv, number", [
    ({"error_code": "AccessDeniedException"}, CKR.FUNCTION_FAILED,
     ERROR_TABLE["AccessDeniedException"][1]),
    ({"error_code": "KMSInternalException"}, CKR.DEVICE_ERROR,
     ERROR_TABLE["KMSInternalException"][1]),
    ({"http_status": 500}, CKR.DEVICE_ERROR, 500),
])
def test_sign_fault_code_and_device_error(fault_env, faults, fault, rv, number):
    faults.set_faults(operations=["Sign"], **fault)
    answers = run_case(r"""
k = find("ec-sign")
sig, n = ffi.new("unsigned char[64]"), ffi.new("CK_ULONG *", 64)
data = ffi.new("unsigned char[32]")
assert lib.C_SignInit(s, mechanism(0x1041), k) == 0
say("C_Sign:fault", lib.C_Sign(s, data, 32, sig, n))
say("C_GetSessionInfo:device-error", device_error())
say("C_GetSessionInfo:still", device_error())  # reading it does not reset it
assert lib.C_SignInit(s, mechanism(0x1041), k) == 0
say("C_GetSessionInfo:after-next-call", device_error())
""", fault_env)
    got = dict(answers)
    assert got.pop("C_GetSessionInfo:device-error") == number
    assert got.pop("C_GetSessionInfo:still") == number
    assert got.pop("C_GetSessionInfo:after-next-call") == 0
    check(list(got.items()), {"C_Sign:fault": int(rv)})


@pytest.mark.parametrize("fault, rv, number", [
    ({"error_code": "AccessDeniedException"}, CKR.OK, 0),  # a refused key is left out
    ({"http_status": 503}, CKR.DEVICE_ERROR, 503),
])
def test_get_public_key_fault(fault_env, faults, fault, rv, number):
    faults.set_faults(operations=["GetPublicKey"], **fault)
    answers = run_case(r"""
say("C_FindObjectsInit:fault", lib.C_FindObjectsInit(s, ffi.NULL, 0))
say("C_GetSessionInfo:device-error", device_error())
""", fault_env)
    got = dict(answers)
    assert got.pop("C_GetSessionInfo:device-error") == number
    check(list(got.items()), {"C_FindObjectsInit:fault": int(rv)})


def test_wild_pointers_in_the_c_only_entry_points(env):
    """C_GetFunctionList and C_GetInterface* work before Python starts; they check pointers too."""
    answers = run_case(r"""
for name, address in WILD:
    say(f"C_GetFunctionList:{name}", lib.C_GetFunctionList(wild("CK_VOID_PTR *", address)))
    say(f"C_GetInterfaceList:count-{name}",
        lib.C_GetInterfaceList(ffi.NULL, wild("CK_ULONG *", address)))
    n = ffi.new("CK_ULONG *", 8)
    say(f"C_GetInterfaceList:list-{name}",
        lib.C_GetInterfaceList(wild("CK_INTERFACE *", address), n))
    out = ffi.new("CK_INTERFACE_PTR *")
    say(f"C_GetInterface:name-{name}",
        lib.C_GetInterface(wild("CK_UTF8CHAR *", address), ffi.NULL, out, 0))
    say(f"C_GetInterface:version-{name}",
        lib.C_GetInterface(ffi.NULL, wild("CK_VERSION *", address), out, 0))
    say(f"C_GetInterface:out-{name}",
        lib.C_GetInterface(ffi.NULL, ffi.NULL, wild("CK_INTERFACE_PTR *", address), 0))
out = ffi.new("CK_INTERFACE_PTR *")
version = ffi.new("CK_VERSION *", (3, 0))
say("C_GetInterface:valid", lib.C_GetInterface(b"PKCS 11", version, out, 0))
assert ffi.string(out[0].pInterfaceName) == b"PKCS 11"
n = ffi.new("CK_ULONG *", 1)
say("C_GetInterfaceList:small", lib.C_GetInterfaceList(ffi.new("CK_INTERFACE[1]"), n))
assert n[0] == 2
list_ = ffi.new("CK_VOID_PTR *")
say("C_GetFunctionList:valid", lib.C_GetFunctionList(list_))
""", env)
    expected = {f"{f}{w}": BAD for w in WILDS for f in (
        "C_GetFunctionList:", "C_GetInterfaceList:count-", "C_GetInterfaceList:list-",
        "C_GetInterface:name-", "C_GetInterface:version-", "C_GetInterface:out-")}
    expected.update({"C_GetInterface:valid": OK, "C_GetFunctionList:valid": OK,
                     "C_GetInterfaceList:small": int(CKR.BUFFER_TOO_SMALL)})
    check(answers, expected)


def test_not_implemented_list_matches_the_abi():
    """core/returns.py allows CKR_FUNCTION_NOT_SUPPORTED just where abi/ has no implementation."""
    import re

    from pkcs11_kms.core.returns import NOT_IMPLEMENTED

    abi = TESTS.parent / "pkcs11_kms" / "abi"
    source = (abi / "functions.py").read_text() + (abi / "crypto.py").read_text()
    implemented = set(re.findall(r"^def (C_\w+)\(", source, re.M))
    implemented |= set(re.findall(r"^(C_\w+) = ", source, re.M))
    implemented |= {"C_GetFunctionList", "C_GetInterfaceList", "C_GetInterface"}  # in cdefs/shim.c
    assert implemented | NOT_IMPLEMENTED == set(ALLOWED)
    assert not implemented & NOT_IMPLEMENTED


@pytest.mark.parametrize("refused", [[], ["--writev"]], ids=["both", "writev"])
def test_without_process_vm_calls_plain_copies_still_work(env, tmp_path, refused):
    """Where seccomp refuses process_vm_readv/writev (EPERM; or only writev), the copies fall back
    to memcpy: valid pointers still work, and one line says wild ones are no longer caught."""
    from hosts import build_c_host

    launcher = build_c_host("no_process_vm", tmp_path)
    script = PRELUDE + r"""
out = ffi.new("CK_INTERFACE_PTR *")
say("C_GetInterface:valid", lib.C_GetInterface(b"PKCS 11", ffi.NULL, out, 0))
info = ffi.new("CK_INFO *")
say("C_GetInfo:valid", lib.C_GetInfo(info))
k = find("ec-sign")
assert lib.C_SignInit(s, mechanism(0x1041), k) == 0  # CKM_ECDSA
sig, n = ffi.new("unsigned char[64]"), ffi.new("CK_ULONG *", 64)
say("C_Sign:valid", lib.C_Sign(s, ffi.new("unsigned char[32]"), 32, sig, n))
assert n[0] == 64
"""
    proc = subprocess.run([str(launcher), *refused, sys.executable, "-c", script], env=env,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["C_GetInterface:valid", "0x0", "C_GetInfo:valid", "0x0",
                                   "C_Sign:valid", "0x0"], proc.stdout + proc.stderr
    assert proc.stderr.count("process_vm_readv/writev are not allowed here") == 1, proc.stderr
