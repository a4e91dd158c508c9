"""Module state (PKCS#11 §5.4 general-purpose functions): one Module between C_Initialize and C_Finalize."""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import __version__
from ..ck import CKF, CKR
from ..config import Config, load_config
from ..errors import ConfigError, PKCS11Error
from ..kms import Backends, KmsError
from .kms_errors import failure
from .objects import renew_handle_lock
from .token import Token, alias_label, discover, fit_label, is_alias

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("pkcs11_kms.module")

MANUFACTURER = "pkcs11-kms"
LIBRARY_DESCRIPTION = "AWS KMS PKCS#11 module"


def _version() -> tuple[int, int]:
    major, minor = (int(x) for x in __version__.split(".")[:2])
    return major, minor


LIBRARY_VERSION = _version()  # C_GetInfo's library version, the slots' firmware version


@dataclass(frozen=True)
class InitArgs:
    """What C_Initialize's CK_C_INITIALIZE_ARGS said, already unpacked by the abi layer."""

    flags: int = 0
    mutex_callbacks: int = 0  # how many of the four mutex function pointers are set
    reserved: str | None = None  # pReserved as a string (our extension: a config path)


class Module:
    """What lives from C_Initialize to C_Finalize: config, tokens, sessions, and the KMS backends
    with what they learned of the keys (docs/design.md, "Key changes")."""

    def __init__(self, config: Config, threads_allowed: bool) -> None:
        self.config = config
        self.threads_allowed = threads_allowed
        self.lock = threading.RLock()  # guards the dicts below; never held across a KMS call
        self.pid = os.getpid()
        self.backends = Backends()  # one per Connection; C_Finalize drops them with the module
        self._tokens: list[Token] | None = None
        self._build_lock = threading.Lock()  # one builder of the token list at a time
        self.sessions: dict[int, Session] = {}

    def tokens(self) -> list[Token]:
        """The tokens, built on first need: KMS is called only when a token has one per key.
        A failure is retried by the next call."""
        tokens = self._tokens
        if tokens is None:
            with self._build_lock:  # not self.lock: building may call KMS
                if self._tokens is None:
                    built = build_tokens(self.config, self.backends)
                    with self.lock:
                        self._tokens = built
                tokens = self._tokens
        return tokens

    def renew_locks(self) -> None:
        """After fork, in the child: locks another thread held at fork() stay held for good."""
        self.lock = threading.RLock()
        self._build_lock = threading.Lock()
        self.backends.renew_lock()
        for token in self._tokens or []:
            token.renew_lock()

    def token(self, slot_id: int) -> Token:
        tokens = self.tokens()
        if not 0 <= slot_id < len(tokens):
            raise PKCS11Error(CKR.SLOT_ID_INVALID, f"no slot {slot_id}")
        return tokens[slot_id]


def build_tokens(config: Config, backends: Backends | None = None) -> list[Token]:
    """The tokens of `config`; `backends` is the module's (a tool passes none: its own)."""
    backend = backends or Backends()
    tokens: list[Token] = []
    for tc in config.tokens:
        kms = backend(tc.connection)
        if not tc.token_per_key:
            region = tc.connection.region or "default region"
            label = tc.label or fit_label(f"KMS {region}")
            tokens.append(Token(len(tokens), tc, label, kms, refs=tc.keys))
            continue
        if tc.keys is not None:  # one token per named key, still without calling KMS
            for ref in tc.keys:
                label = ref.label or (
                    alias_label(ref.key) if is_alias(ref.key) else ref.key.rsplit("/", 1)[-1]
                )
                tokens.append(Token(len(tokens), tc, label, kms, refs=(ref,)))
            continue
        # One token per listed key: the slot list is fixed until C_Finalize; each token then
        # reads its own key again (a new key needs C_Finalize + C_Initialize to get a slot).
        try:
            keys = discover(tc, kms)
        except KmsError as e:
            error = failure(e)
            raise PKCS11Error(error.rv, f"listing keys for token {tc.label or ''}: {error}",
                              error.device_error) from e
        for key in keys:
            tokens.append(Token(len(tokens), tc, key.label, kms, keys=[key]))
    return tokens


_module: Module | None = None
_state_lock = threading.Lock()


def _fresh_locks_in_child() -> None:
    """docs/design.md, "Fork": a lock another thread held at fork() is held in the child for good,
    and a child that keeps its parent's sessions would hang on it (a token loading its keys)."""
    global _state_lock
    _state_lock = threading.Lock()
    renew_handle_lock()
    m = _module
    if m is not None:
        m.renew_locks()


os.register_at_fork(after_in_child=_fresh_locks_in_child)


def module() -> Module:
    """The initialised module, or CKR_CRYPTOKI_NOT_INITIALIZED."""
    m = _module  # a child that did not re-initialise keeps its parent's (docs/design.md, "Fork")
    if m is None:
        raise PKCS11Error(CKR.CRYPTOKI_NOT_INITIALIZED)
    return m


def initialize(args: InitArgs) -> None:
    """C_Initialize (§5.4): validate the locking arguments, read the config; no KMS call here."""
    global _module
    if args.mutex_callbacks not in (0, 4):
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "some but not all mutex callbacks are set")
    if args.mutex_callbacks == 4 and not args.flags & CKF.OS_LOCKING_OK:
        raise PKCS11Error(CKR.CANT_LOCK, "this module can only use OS locking")
    with _state_lock:
        if _module is not None:
            if _module.pid == os.getpid():
                raise PKCS11Error(CKR.CRYPTOKI_ALREADY_INITIALIZED)
            log.debug("re-initialising in forked child %d", os.getpid())
            _module = None
        from .. import kms, logs

        logs.configure(None, None)  # the level variable applies while the config loads
        try:
            config = load_config(args.reserved)
        except ConfigError as e:
            log.error("%s", e.why)
            raise
        logs.configure(config.log_level, config.log_file)
        threads_allowed = not args.flags & CKF.LIBRARY_CANT_CREATE_OS_THREADS
        kms.set_threads_allowed(threads_allowed)
        _module = Module(config, threads_allowed)
        log.debug("initialised pkcs11-kms %s with %s", __version__, config.path or "defaults")


def finalize() -> None:
    """C_Finalize (§5.4): forget every session; nothing risky while the interpreter shuts down."""
    global _module
    with _state_lock:
        if _module is None:
            raise PKCS11Error(CKR.CRYPTOKI_NOT_INITIALIZED)
        _module = None
    if sys.is_finalizing():
        return
    from .. import kms

    kms.shutdown()


@dataclass(frozen=True)
class Info:
    cryptoki_version: tuple[int, int] = (2, 40)
    manufacturer: str = MANUFACTURER
    flags: int = 0
    description: str = LIBRARY_DESCRIPTION
    library_version: tuple[int, int] = LIBRARY_VERSION


def get_info() -> Info:
    module()
    return Info()
