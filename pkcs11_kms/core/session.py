"""Sessions and login (PKCS#11 §5.6): session handles, states, the user's login, object search."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..ck import CKF, CKR, CKS, CKU
from ..errors import PKCS11Error
from .mechanisms import Kind
from .module import Module, module
from .token import Token

if TYPE_CHECKING:
    from .operations import Active

_next_session = itertools.count(1)  # process-wide: a handle is never reused


@dataclass
class Session:
    handle: int
    token: Token
    flags: int
    find: list[int] | None = None  # handles still to return while a search is active
    operations: dict[Kind, Active] = field(default_factory=dict)  # one of each kind at a time
    # The KMS error number (kms/errors.py ERROR_TABLE) of the last call made in this session, 0
    # when it did not fail on KMS; C_GetSessionInfo reports it (docs/design.md, "Device errors").
    device_error: int = 0

    @property
    def state(self) -> CKS:
        rw = bool(self.flags & CKF.RW_SESSION)
        if self.token.logged_in:
            return CKS.RW_USER_FUNCTIONS if rw else CKS.RO_USER_FUNCTIONS
        return CKS.RW_PUBLIC_SESSION if rw else CKS.RO_PUBLIC_SESSION


@dataclass(frozen=True)
class SessionInfo:
    slot_id: int
    state: int
    flags: int
    device_error: int = 0


def session(handle: int) -> Session:
    m = module()
    s = m.sessions.get(handle)
    if s is None:
        raise PKCS11Error(CKR.SESSION_HANDLE_INVALID, f"no session {handle}")
    return s


def open_session(slot_id: int, flags: int) -> int:
    """C_OpenSession. Read/write sessions are allowed (pkcs11-tool --test and Java open them), though
    no token object can be written."""
    m = module()
    token = m.token(slot_id)
    if not flags & CKF.SERIAL_SESSION:
        raise PKCS11Error(CKR.SESSION_PARALLEL_NOT_SUPPORTED)
    with m.lock:
        handle = next(_next_session)
        m.sessions[handle] = Session(handle, token, flags)
    return handle


def sessions_of(m: Module, token: Token) -> list[Session]:
    """The token's open sessions; the caller holds m.lock."""
    return [s for s in m.sessions.values() if s.token is token]


def _drop_session_objects(token: Token, sessions: set[int]) -> None:
    """Session objects end with the session that made them (§4.4)."""
    for h, (owner, _) in list(token.session_objects.items()):
        if owner in sessions:
            del token.session_objects[h]


def close_session(handle: int) -> None:
    m = module()
    with m.lock:
        s = session(handle)
        del m.sessions[handle]
        _drop_session_objects(s.token, {handle})
        if not sessions_of(m, s.token):
            s.token.logged_in = False  # §5.6: closing the last session logs the user out


def close_all_sessions(slot_id: int) -> None:
    m = module()
    token = m.token(slot_id)
    with m.lock:
        closing = sessions_of(m, token)
        for s in closing:
            del m.sessions[s.handle]
        _drop_session_objects(token, {s.handle for s in closing})
        token.logged_in = False


def get_session_info(handle: int) -> SessionInfo:
    s = session(handle)
    return SessionInfo(s.token.slot_id, s.state, s.flags, s.device_error)


def login(handle: int, user_type: int) -> None:
    """C_Login: KMS authorises with IAM, so any PIN logs the user in; there is no security officer."""
    s = session(handle)
    if user_type == CKU.SO:
        # There is no security officer, so no SO PIN is right; with read-only sessions open,
        # §5.6 asks for CKR_SESSION_READ_ONLY_EXISTS first.
        m = module()
        with m.lock:
            read_only = any(not o.flags & CKF.RW_SESSION for o in sessions_of(m, s.token))
        raise PKCS11Error(CKR.SESSION_READ_ONLY_EXISTS if read_only else CKR.PIN_INCORRECT,
                          "this token has no security officer")
    if user_type == CKU.CONTEXT_SPECIFIC:
        # §5.6: it authenticates an operation; without one (or without a login) it is improper use.
        if not s.operations or not s.token.logged_in:
            raise PKCS11Error(CKR.OPERATION_NOT_INITIALIZED, "context-specific login out of context")
        return  # no key needs CKA_ALWAYS_AUTHENTICATE; accept it as a no-op
    if user_type != CKU.USER:
        raise PKCS11Error(CKR.USER_TYPE_INVALID, f"user type {user_type}")
    if s.token.logged_in:
        raise PKCS11Error(CKR.USER_ALREADY_LOGGED_IN)
    s.token.logged_in = True


def logout(handle: int) -> None:
    s = session(handle)
    if not s.token.logged_in:
        raise PKCS11Error(CKR.USER_NOT_LOGGED_IN)
    s.token.logged_in = False
