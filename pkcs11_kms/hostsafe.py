"""Keeps the module's own OpenSSL use apart from its host's (docs/design.md, "Inside OpenSSL").

The module runs inside programs whose OpenSSL configuration may load this very module (through
pkcs11-provider, p11-kit's proxy, or `random = PKCS11-RAND`). Whatever the module does for itself
must not load that configuration, nor reach the module through it:

- cryptography's bundled OpenSSL reads `OPENSSL_CONF` when it is first imported: it is imported
  with `OPENSSL_CONF` pointing at an empty file (`import_cryptography`);
- Python's `ssl` and `hashlib` share the host's libcrypto, whose default library context holds the
  host's providers: the module's calls and its own threads use a private OSSL_LIB_CTX with only
  OpenSSL's default provider, made without any configuration (`enter`/`leave`,
  `start_module_thread`). OSSL_LIB_CTX_set0_default changes the default for one thread only;
- pkcs11-provider's early load calls the module from inside the host's OpenSSL configuration
  load, and any other thread initialising OpenSSL then waits for that load to end. So every call
  first initialises OpenSSL on the caller's thread (`enter`): inside the load, OpenSSL sees the
  recursion, skips the configuration and marks it done, and the module's event-loop thread no
  longer waits on its own caller. Outside it, this is what the module's TLS does anyway.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("pkcs11_kms")

_CRYPTOGRAPHY = "cryptography.hazmat.bindings._rust"
# OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS: with the configuration and the
# algorithms OPENSSL_init_ssl adds, every option SSL_CTX_new asks for. OpenSSL returns at once
# from a later call whose options are all done; a call asking for one more would wait.
_INIT_OPTIONS = 0x00200000 | 0x00000002


def import_cryptography() -> None:
    """Imports cryptography's bindings without the host's OpenSSL configuration.

    Its wheel's OpenSSL reads `OPENSSL_CONF`, else a file under its own build prefix, at import.
    Replacing an existing variable's value swaps one pointer in `environ` (no array is moved under
    a host thread reading it); the value is back when the import returns. Inside a Python host that
    already imported cryptography, nothing happens: that OpenSSL is the host's.
    """
    if _CRYPTOGRAPHY in sys.modules:
        return
    saved = os.environ.get("OPENSSL_CONF")
    if saved is not None:
        os.environ["OPENSSL_CONF"] = os.devnull
    try:
        __import__(_CRYPTOGRAPHY)
    finally:
        if saved is not None:
            os.environ["OPENSSL_CONF"] = saved


class _LibraryContext:
    """A private OSSL_LIB_CTX in the libcrypto that Python's `ssl` uses."""

    def __init__(self) -> None:
        import _ssl
        import ctypes

        # dlsym on _ssl's handle searches _ssl and then its dependencies: its libcrypto.
        lib = ctypes.CDLL(getattr(_ssl, "__file__", None))
        new = lib.OSSL_LIB_CTX_new  # AttributeError before OpenSSL 3: nothing to isolate
        new.restype = ctypes.c_void_p
        new.argtypes = []
        load = lib.OSSL_PROVIDER_load
        load.restype = ctypes.c_void_p
        load.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._set = lib.OSSL_LIB_CTX_set0_default
        self._set.restype = ctypes.c_void_p
        self._set.argtypes = [ctypes.c_void_p]
        self.init_ssl = lib.OPENSSL_init_ssl
        self.init_ssl.restype = ctypes.c_int
        self.init_ssl.argtypes = [ctypes.c_uint64, ctypes.c_void_p]
        ctx = new()
        if not ctx or not load(ctx, b"default"):
            raise OSError("OpenSSL could not make a library context with its default provider")
        self.ctx: int = ctx

    def set_default(self, ctx: int | None) -> int | None:
        """Makes `ctx` this thread's default; returns the previous one (None: not changed)."""
        if ctx is None:
            return None
        previous: int | None = self._set(ctx)
        return previous


_context: _LibraryContext | None = None
_context_failed = False
_context_lock = threading.Lock()


def _library_context() -> _LibraryContext | None:
    global _context, _context_failed
    if _context is not None or _context_failed:
        return _context
    with _context_lock:
        if _context is None and not _context_failed:
            try:
                _context = _LibraryContext()
            except (AttributeError, OSError) as exc:
                _context_failed = True
                log.warning("cannot separate the module's TLS from the host's OpenSSL: %s", exc)
    return _context


def enter() -> int | None:
    """Makes the private library context this thread's default; give the result to leave()."""
    context = _library_context()
    if context is None:
        return None
    context.init_ssl(_INIT_OPTIONS, None)
    return context.set_default(context.ctx)


def leave(previous: int | None) -> None:
    if previous is not None and _context is not None:
        _context.set_default(previous)


_thread_hooks: list[Callable[[], None]] = []


def add_thread_hook(hook: Callable[[], None]) -> None:
    """Runs `hook` first in every thread the module starts (the abi layer marks them in C)."""
    _thread_hooks.append(hook)


def start_module_thread() -> None:
    """First thing in each of the module's own threads: private OpenSSL, and marked as ours."""
    for hook in _thread_hooks:
        hook()
    enter()
