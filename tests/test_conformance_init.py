"""Conformance of the general-purpose functions (PKCS#11 v3.0 §5.4): C_Initialize, C_Finalize,
C_GetInfo, C_GetFunctionList, C_GetInterfaceList, C_GetInterface."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pytest
from conformance import BEFORE_INIT, DEVIATIONS, PROTOTYPES, V2_FUNCTIONS, p11, text  # noqa: F401

from pkcs11_kms.ck import CKF, CKR


@contextlib.contextmanager
def finalized(p11):  # type: ignore[no-untyped-def]
    """The library finalised for the block, initialised again afterwards whatever happens."""
    assert p11.lib.C_Finalize(p11.ffi.NULL) == CKR.OK
    try:
        yield
    finally:
        p11.lib.C_Finalize(p11.ffi.NULL)  # CKR_CRYPTOKI_NOT_INITIALIZED unless initialised again
        assert p11.lib.C_Initialize(p11.ffi.NULL) == CKR.OK


def init_args(p11, flags=0, callbacks=0, reserved=None):  # type: ignore[no-untyped-def]
    """A CK_C_INITIALIZE_ARGS with the first `callbacks` of the four mutex functions set."""
    ffi = p11.ffi
    args = ffi.new("CK_C_INITIALIZE_ARGS *")
    mutex = [
        ffi.callback("CK_CREATEMUTEX", lambda pp: 0),
        ffi.callback("CK_DESTROYMUTEX", lambda p: 0),
        ffi.callback("CK_LOCKMUTEX", lambda p: 0),
        ffi.callback("CK_UNLOCKMUTEX", lambda p: 0),
    ]
    for name, fn in list(zip(("CreateMutex", "DestroyMutex", "LockMutex", "UnlockMutex"),
                             mutex))[:callbacks]:
        setattr(args, name, fn)
    args.flags = flags
    args.pReserved = reserved if reserved is not None else ffi.NULL
    p11._keep.extend(mutex)
    return args


def test_every_function_before_initialize_is_not_initialized(p11):
    """§5.1.1 and §5.4.1: before C_Initialize every function but C_Initialize, C_GetFunctionList,
    C_GetInterfaceList and C_GetInterface returns CKR_CRYPTOKI_NOT_INITIALIZED; §5.1.7 puts it
    before CKR_ARGUMENTS_BAD, so NULL pointers everywhere change nothing. C_Finalize too."""
    with finalized(p11):
        got = {name: getattr(p11.lib, name)(*p11.zero_args(name))
               for name in PROTOTYPES if name not in BEFORE_INIT}
        assert {n: rv for n, rv in got.items() if rv != CKR.CRYPTOKI_NOT_INITIALIZED} == {}
        assert len(got) == len(PROTOTYPES) - len(BEFORE_INIT)
        # The four that work before C_Initialize.
        out = p11.ffi.new("CK_VOID_PTR *")
        assert p11.lib.C_GetFunctionList(out) == CKR.OK and out[0] != p11.ffi.NULL
        n = p11.ffi.new("CK_ULONG *")
        assert p11.lib.C_GetInterfaceList(p11.ffi.NULL, n) == CKR.OK and n[0] >= 1
        iface = p11.ffi.new("CK_INTERFACE_PTR *")
        assert p11.lib.C_GetInterface(p11.ffi.NULL, p11.ffi.NULL, iface, 0) == CKR.OK


def test_initialize_twice_and_finalize_reserved(p11):
    """§5.4.1: a second C_Initialize returns CKR_CRYPTOKI_ALREADY_INITIALIZED. §5.4.2: C_Finalize's
    pReserved must be NULL_PTR (CKR_ARGUMENTS_BAD), and the library stays initialised."""
    lib, ffi = p11.lib, p11.ffi
    assert lib.C_Initialize(ffi.NULL) == CKR.CRYPTOKI_ALREADY_INITIALIZED
    assert lib.C_Initialize(init_args(p11)) == CKR.CRYPTOKI_ALREADY_INITIALIZED
    assert lib.C_Finalize(ffi.new("char[]", b"x")) == CKR.ARGUMENTS_BAD
    info = ffi.new("CK_INFO *")
    assert lib.C_GetInfo(info) == CKR.OK


@pytest.mark.parametrize("flags, callbacks, rv", [
    (0, 0, CKR.OK),  # no locking asked for
    (CKF.OS_LOCKING_OK, 0, CKR.OK),
    (CKF.OS_LOCKING_OK, 4, CKR.OK),  # the library may use OS locking instead of the callbacks
    (0, 2, CKR.ARGUMENTS_BAD),  # some but not all of the four
    (CKF.OS_LOCKING_OK, 3, CKR.ARGUMENTS_BAD),
    (0, 4, CKR.CANT_LOCK),  # must use the application's callbacks: this library cannot
    (CKF.LIBRARY_CANT_CREATE_OS_THREADS, 0, CKR.OK),  # KMS calls run on the caller's thread
])
def test_initialize_locking_arguments(p11, flags, callbacks, rv):
    """§5.4.1 and CK_C_INITIALIZE_ARGS (§3.7): the four mutex callbacks are all set or none
    (CKR_ARGUMENTS_BAD); callbacks without CKF_OS_LOCKING_OK must be used, or CKR_CANT_LOCK."""
    with finalized(p11):
        assert p11.lib.C_Initialize(init_args(p11, flags, callbacks)) == rv
        if rv == CKR.OK:  # initialised for real: KMS answers
            s = p11.open()
            buf = p11.ffi.new("unsigned char[16]")
            assert p11.lib.C_GenerateRandom(s, buf, 16) == CKR.OK
        else:
            assert p11.lib.C_GetInfo(p11.ffi.new("CK_INFO *")) == CKR.CRYPTOKI_NOT_INITIALIZED


def test_initialize_reserved_config_path(p11):
    """Deviation ("pReserved"): §5.4.1 wants pReserved NULL_PTR; libp11 and pkcs11-provider pass a
    configuration string there, so a string is taken as the config path (a pointer that is not a
    string is CKR_ARGUMENTS_BAD: tests/test_bad_input.py)."""
    path = p11.ffi.new("char[]", os.environ["PKCS11_KMS_CONFIG"].encode())
    with finalized(p11):
        assert p11.lib.C_Initialize(init_args(p11, reserved=path)) == CKR.OK
        n = p11.ffi.new("CK_ULONG *")
        assert p11.lib.C_GetSlotList(0, p11.ffi.NULL, n) == CKR.OK and n[0] == 1


def test_finalize_closes_every_session(p11):
    """§5.4.2 and §5.6: C_Finalize ends the application's use of the library; a session opened
    before it is no longer valid after the next C_Initialize."""
    old = p11.open()
    with finalized(p11):
        assert p11.lib.C_Initialize(p11.ffi.NULL) == CKR.OK
        info = p11.ffi.new("CK_SESSION_INFO *")
        assert p11.lib.C_GetSessionInfo(old, info) == CKR.SESSION_HANDLE_INVALID


def test_get_info(p11):
    """§5.4.3: C_GetInfo fills CK_INFO (§3.1): blank-padded strings, flags 0; NULL pInfo is
    CKR_ARGUMENTS_BAD."""
    ffi, lib = p11.ffi, p11.lib
    assert lib.C_GetInfo(ffi.NULL) == CKR.ARGUMENTS_BAD
    info = ffi.new("CK_INFO *")
    assert lib.C_GetInfo(info) == CKR.OK
    assert (info.cryptokiVersion.major, info.cryptokiVersion.minor) in ((2, 40), (3, 0))
    assert text(ffi.buffer(info.manufacturerID), 32) == "pkcs11-kms"
    assert text(ffi.buffer(info.libraryDescription), 32)
    assert info.flags == 0


def table(p11, pointer, count: int):  # type: ignore[no-untyped-def]
    """A CK_FUNCTION_LIST[_3_0]: its version, and its `count` function pointers."""
    ffi = p11.ffi
    version = ffi.cast("CK_VERSION *", pointer)
    first = ffi.cast("void **", ffi.cast("char *", pointer) + ffi.sizeof("void *"))
    return (version.major, version.minor), [first[i] for i in range(count)]


def exported(p11, names: list[str]) -> list[object]:
    return [p11.ffi.cast("void *", p11.ffi.addressof(p11.lib, n)) for n in names]


def test_get_function_list(p11):
    """§5.4.4: C_GetFunctionList gives a v2.x CK_FUNCTION_LIST whose every entry is set (an
    unsupported function has a stub returning CKR_FUNCTION_NOT_SUPPORTED, §5.1.6), in table
    order; NULL is CKR_ARGUMENTS_BAD."""
    ffi, lib = p11.ffi, p11.lib
    assert lib.C_GetFunctionList(ffi.NULL) == CKR.ARGUMENTS_BAD
    out = ffi.new("CK_VOID_PTR *")
    assert lib.C_GetFunctionList(out) == CKR.OK
    version, functions = table(p11, out[0], len(V2_FUNCTIONS))
    assert version == (2, 40)
    assert functions == exported(p11, V2_FUNCTIONS)


def test_get_interface_list(p11):
    """§5.4.5: the two-call convention of §5.2 over CK_INTERFACEs: NULL asks for the count, a
    short array is CKR_BUFFER_TOO_SMALL with the count set; NULL pulCount is CKR_ARGUMENTS_BAD.
    Both interfaces are "PKCS 11": v3.0 with every function, v2.40 with the first 68."""
    ffi, lib = p11.ffi, p11.lib
    assert lib.C_GetInterfaceList(ffi.NULL, ffi.NULL) == CKR.ARGUMENTS_BAD
    n = ffi.new("CK_ULONG *")
    assert lib.C_GetInterfaceList(ffi.NULL, n) == CKR.OK and n[0] == 2
    out = ffi.new("CK_INTERFACE[2]")
    n[0] = 1
    assert lib.C_GetInterfaceList(out, n) == CKR.BUFFER_TOO_SMALL and n[0] == 2
    assert lib.C_GetInterfaceList(out, n) == CKR.OK and n[0] == 2
    got = {}
    for i in range(2):
        assert ffi.string(out[i].pInterfaceName) == b"PKCS 11"
        version, _ = table(p11, out[i].pFunctionList, 0)
        names = PROTOTYPES if version == (3, 0) else V2_FUNCTIONS
        got[version] = table(p11, out[i].pFunctionList, len(names))[1] == exported(p11, names)
    assert got == {(3, 0): True, (2, 40): True}


def test_get_interface(p11):
    """§5.4.6: NULL name and version give the default interface; a name, version or flags the
    library does not offer find nothing (CKR_ARGUMENTS_BAD, the only argument error in its list);
    NULL ppInterface is CKR_ARGUMENTS_BAD."""
    ffi, lib = p11.ffi, p11.lib
    out = ffi.new("CK_INTERFACE_PTR *")
    assert lib.C_GetInterface(ffi.NULL, ffi.NULL, ffi.NULL, 0) == CKR.ARGUMENTS_BAD
    assert lib.C_GetInterface(ffi.NULL, ffi.NULL, out, 0) == CKR.OK
    assert table(p11, out[0].pFunctionList, 0)[0] == (3, 0)
    name = ffi.new("CK_UTF8CHAR[]", b"PKCS 11")
    for major, minor in ((2, 40), (3, 0)):
        version = ffi.new("CK_VERSION *", (major, minor))
        assert lib.C_GetInterface(name, version, out, 0) == CKR.OK
        assert table(p11, out[0].pFunctionList, 0)[0] == (major, minor)
    assert lib.C_GetInterface(ffi.new("CK_UTF8CHAR[]", b"Vendor X"), ffi.NULL, out, 0) == (
        CKR.ARGUMENTS_BAD)
    assert lib.C_GetInterface(name, ffi.new("CK_VERSION *", (3, 1)), out, 0) == CKR.ARGUMENTS_BAD
    assert lib.C_GetInterface(name, ffi.NULL, out, CKF.INTERFACE_FORK_SAFE) == CKR.ARGUMENTS_BAD


def test_every_deviation_is_listed():
    """The conformance tests name each deliberate difference from the specification in their
    docstrings ("Deviation" and its names in brackets); DEVIATIONS (the table in
    docs/mechanisms.md) lists exactly those, with the reason."""
    named = set()
    for path in Path(__file__).parent.glob("test_conformance_*.py"):
        for group in re.findall(r'Deviation \(((?:"[^"]+",?\s*)+)\)', path.read_text()):
            named.update(re.findall(r'"([^"]+)"', group))
    assert named == set(DEVIATIONS)
