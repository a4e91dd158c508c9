"""Conformance of session management (PKCS#11 v3.0 §5.6): C_OpenSession, C_CloseSession,
C_CloseAllSessions, C_GetSessionInfo, C_SessionCancel, C_GetOperationState, C_SetOperationState,
C_Login, C_LoginUser, C_Logout."""

from __future__ import annotations

import pytest
from conformance import PROTOTYPES, SESSIONLESS, UNSUPPORTED, p11, session  # noqa: F401

from pkcs11_kms.ck import CKF, CKM, CKR, CKS, CKU

RW = CKF.SERIAL_SESSION | CKF.RW_SESSION


def state(p11, h: int) -> int:
    info = p11.ffi.new("CK_SESSION_INFO *")
    assert p11.lib.C_GetSessionInfo(h, info) == CKR.OK
    return int(info.state)


@pytest.fixture
def logged_out(p11):  # type: ignore[no-untyped-def]
    """The login state is the token's (§5.6.8): no test leaves the user logged in for the next."""
    yield
    h = p11.open()
    p11.lib.C_Logout(h)  # CKR_USER_NOT_LOGGED_IN when nobody is
    p11.lib.C_CloseSession(h)


def test_open_session_arguments(p11):
    """§5.6.1: CKF_SERIAL_SESSION must be set (CKR_SESSION_PARALLEL_NOT_SUPPORTED); an unknown slot
    is CKR_SLOT_ID_INVALID; NULL phSession is CKR_ARGUMENTS_BAD. A handle is never
    CK_INVALID_HANDLE (0), and two sessions have two handles."""
    ffi, lib = p11.ffi, p11.lib
    h = ffi.new("CK_SESSION_HANDLE *")
    assert lib.C_OpenSession(0, 0, ffi.NULL, ffi.NULL, h) == CKR.SESSION_PARALLEL_NOT_SUPPORTED
    assert lib.C_OpenSession(0, CKF.RW_SESSION, ffi.NULL, ffi.NULL, h) == (
        CKR.SESSION_PARALLEL_NOT_SUPPORTED)
    assert lib.C_OpenSession(7, CKF.SERIAL_SESSION, ffi.NULL, ffi.NULL, h) == CKR.SLOT_ID_INVALID
    assert lib.C_OpenSession(0, CKF.SERIAL_SESSION, ffi.NULL, ffi.NULL, ffi.NULL) == (
        CKR.ARGUMENTS_BAD)
    a, b = p11.open(), p11.open(RW)
    assert 0 not in (a, b) and a != b
    for x in (a, b):
        assert lib.C_CloseSession(x) == CKR.OK


def test_session_info(p11, session):
    """§5.6.4: CK_SESSION_INFO (§3.3) gives the slot, the state (R/O or R/W public session) and
    the flags, CKF_SERIAL_SESSION always set; NULL pInfo is CKR_ARGUMENTS_BAD. Deviation
    ("read-only token"): read/write sessions open, though no token object can be written."""
    ffi, lib = p11.ffi, p11.lib
    assert lib.C_GetSessionInfo(session, ffi.NULL) == CKR.ARGUMENTS_BAD
    info = ffi.new("CK_SESSION_INFO *")
    assert lib.C_GetSessionInfo(session, info) == CKR.OK
    assert (info.slotID, info.state, info.flags) == (0, CKS.RO_PUBLIC_SESSION, CKF.SERIAL_SESSION)
    rw = p11.open(RW)
    assert lib.C_GetSessionInfo(rw, info) == CKR.OK
    assert (info.slotID, info.state, info.flags) == (0, CKS.RW_PUBLIC_SESSION, RW)
    assert lib.C_CloseSession(rw) == CKR.OK


def test_closed_session_handle_is_invalid_for_every_function(p11):
    """§5.1.2, §5.6.2: after C_CloseSession the handle is invalid for every function that takes
    one, and §5.1.7 puts CKR_SESSION_HANDLE_INVALID before the argument errors of §5.1.6: NULL
    pointers and zero lengths change nothing. The same for handle 0, which is never a session
    (CK_INVALID_HANDLE). The §5.1.6 stubs (UNSUPPORTED) are left out: a stub returns
    CKR_FUNCTION_NOT_SUPPORTED, whatever the arguments."""
    lib = p11.lib
    h = p11.open()
    assert lib.C_CloseSession(h) == CKR.OK
    takes_session = [n for n in PROTOTYPES if n not in SESSIONLESS and n not in UNSUPPORTED]
    assert len(takes_session) == 38
    for handle in (h, 0):
        got = {}
        for name in takes_session:
            args = p11.zero_args(name)
            args[0] = handle
            got[name] = getattr(lib, name)(*args)
        assert [f"{n} {rv:#x}" for n, rv in got.items() if rv != CKR.SESSION_HANDLE_INVALID] == []


def test_close_all_sessions(p11, logged_out):
    """§5.6.3: C_CloseAllSessions closes every session with the slot's token (and, with the last
    one, logs the user out, Usage Guide "Session events"); an unknown slot is
    CKR_SLOT_ID_INVALID."""
    lib = p11.lib
    a, b = p11.open(), p11.open(RW)
    assert lib.C_Login(a, CKU.USER, b"1234", 4) == CKR.OK
    assert lib.C_CloseAllSessions(7) == CKR.SLOT_ID_INVALID
    assert lib.C_CloseAllSessions(0) == CKR.OK
    info = p11.ffi.new("CK_SESSION_INFO *")
    for h in (a, b):
        assert lib.C_GetSessionInfo(h, info) == CKR.SESSION_HANDLE_INVALID
    c = p11.open()
    assert state(p11, c) == CKS.RO_PUBLIC_SESSION
    assert lib.C_CloseAllSessions(0) == CKR.OK


def test_login_is_shared_by_every_session(p11, logged_out):
    """§5.6.8, §5.6.10 and the Usage Guide's session states: logging in moves every session of
    the application to R/O or R/W User Functions, a session opened later too; a second C_Login is
    CKR_USER_ALREADY_LOGGED_IN; C_Logout returns them to public sessions, and a second one is
    CKR_USER_NOT_LOGGED_IN. Deviation ("any PIN"): any PIN, even none, logs the user in."""
    lib = p11.lib
    ro, rw = p11.open(), p11.open(RW)
    assert lib.C_Logout(ro) == CKR.USER_NOT_LOGGED_IN
    assert lib.C_Login(rw, CKU.USER, b"not checked", 11) == CKR.OK
    assert (state(p11, ro), state(p11, rw)) == (CKS.RO_USER_FUNCTIONS, CKS.RW_USER_FUNCTIONS)
    later = p11.open()
    assert state(p11, later) == CKS.RO_USER_FUNCTIONS
    assert lib.C_Login(ro, CKU.USER, b"1234", 4) == CKR.USER_ALREADY_LOGGED_IN
    assert lib.C_Logout(later) == CKR.OK
    assert (state(p11, ro), state(p11, rw)) == (CKS.RO_PUBLIC_SESSION, CKS.RW_PUBLIC_SESSION)
    assert lib.C_Logout(ro) == CKR.USER_NOT_LOGGED_IN
    assert lib.C_Login(ro, CKU.USER, p11.ffi.NULL, 0) == CKR.OK  # a protected path would say so
    for h in (ro, rw, later):
        assert lib.C_CloseSession(h) == CKR.OK
    fresh = p11.open()
    assert state(p11, fresh) == CKS.RO_PUBLIC_SESSION  # the last session closed: logged out
    assert lib.C_CloseSession(fresh) == CKR.OK


def test_login_user(p11, session, logged_out):
    """§5.6.9: C_LoginUser is C_Login with a user name; the token has no user names, so it acts as
    C_Login. Deviation ("any PIN")."""
    lib = p11.lib
    assert lib.C_LoginUser(session, CKU.USER, b"1234", 4, b"alice", 5) == CKR.OK
    assert state(p11, session) == CKS.RO_USER_FUNCTIONS
    assert lib.C_LoginUser(session, CKU.USER, b"1234", 4, b"alice", 5) == (
        CKR.USER_ALREADY_LOGGED_IN)


def test_login_user_types(p11, session, logged_out):
    """§5.6.8: an unknown user type is CKR_USER_TYPE_INVALID; the SO cannot log in while a R/O
    session exists (CKR_SESSION_READ_ONLY_EXISTS). Deviation ("no SO"): with R/W sessions only,
    no SO PIN is right (CKR_PIN_INCORRECT)."""
    lib = p11.lib
    assert lib.C_Login(session, 7, b"1234", 4) == CKR.USER_TYPE_INVALID
    assert lib.C_Login(session, CKU.SO, b"1234", 4) == CKR.SESSION_READ_ONLY_EXISTS
    assert lib.C_CloseSession(session) == CKR.OK
    rw = p11.open(RW)
    assert lib.C_Login(rw, CKU.SO, b"1234", 4) == CKR.PIN_INCORRECT
    assert state(p11, rw) == CKS.RW_PUBLIC_SESSION
    assert lib.C_CloseSession(rw) == CKR.OK


def test_context_specific_login_needs_an_operation(p11, session, logged_out):
    """§5.6.8: CKU_CONTEXT_SPECIFIC authenticates the operation just initialised; "improper use of
    this user type will result in CKR_OPERATION_NOT_INITIALIZED". With an operation active it is
    accepted (no key needs CKA_ALWAYS_AUTHENTICATE, so there is nothing more to check)."""
    lib = p11.lib
    assert lib.C_Login(session, CKU.USER, b"1234", 4) == CKR.OK
    assert lib.C_Login(session, CKU.CONTEXT_SPECIFIC, b"1234", 4) == CKR.OPERATION_NOT_INITIALIZED
    key = p11.key(session, "rsa")
    assert lib.C_SignInit(session, p11.mechanism(CKM.SHA256_RSA_PKCS), key) == CKR.OK
    assert lib.C_Login(session, CKU.CONTEXT_SPECIFIC, b"1234", 4) == CKR.OK


def test_login_pin_pointer(p11, session, logged_out):
    """§5.6.8 and §5.1.6: a PIN length with a NULL pPin is CKR_ARGUMENTS_BAD (NULL_PTR is for a
    protected authentication path, and then with no length)."""
    assert p11.lib.C_Login(session, CKU.USER, p11.ffi.NULL, 4) == CKR.ARGUMENTS_BAD


def test_operation_state_and_session_cancel_are_not_supported(p11, session):
    """Deviation ("no saved state"): §5.6.6/5.6.7 save and restore an operation's state; a KMS
    operation's cannot be exported, so both are §5.1.6 stubs (as is §5.6.5 C_SessionCancel:
    C_*Init with a NULL mechanism cancels one operation, tests/test_conformance_operations.py)."""
    ffi, lib = p11.ffi, p11.lib
    n = ffi.new("CK_ULONG *")
    assert lib.C_GetOperationState(session, ffi.NULL, n) == CKR.FUNCTION_NOT_SUPPORTED
    assert lib.C_SetOperationState(session, b"x", 1, 0, 0) == CKR.FUNCTION_NOT_SUPPORTED
    assert lib.C_SessionCancel(session, CKF.SIGN) == CKR.FUNCTION_NOT_SUPPORTED
