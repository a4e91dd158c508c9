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
  load, and any other thread initialising OpenSSL then waits for that load to end: the module's
  event-loop thread would wait for its own caller. A probe thread initialises OpenSSL as the
  module's TLS will (`openssl_ready`); until it has returned, KMS calls run on the caller's thread,
  where OpenSSL sees the recursion and does not wait.

It also keeps the host's signals and exit the host's (docs/design.md, "Threads"): our threads
start with every signal blocked, SIGPIPE from our sockets on a host's thread is consumed
(`sigpipe_held`), and once the process is exiting the module does no KMS work (`exiting`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger("pkcs11_kms")

_CRYPTOGRAPHY = "cryptography.hazmat.bindings._rust"
# OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS: with the configuration and the
# algorithms OPENSSL_init_ssl adds, every option SSL_CTX_new asks for.
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
        # Called twice in every C call (enter, leave): through PyDLL, which keeps the interpreter's
        # lock, since a CDLL function lets go of it and must take it back, a wait behind every
        # other thread when many sign at once (docs/performance.md, "What limits each figure").
        # OSSL_LIB_CTX_set0_default only swaps a thread-local pointer: it never blocks.
        self._set = ctypes.PyDLL(getattr(_ssl, "__file__", None)).OSSL_LIB_CTX_set0_default
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
    return None if context is None else context.set_default(context.ctx)


def leave(previous: int | None) -> None:
    if previous is not None and _context is not None:
        _context.set_default(previous)


_thread_hooks: list[Callable[[], None]] = []


def add_thread_hook(hook: Callable[[], None]) -> None:
    """Runs `hook` first in every thread the module starts (the abi layer marks them in C)."""
    _thread_hooks.append(hook)


_ours = threading.local()


def start_thread(thread: threading.Thread) -> None:
    """Starts one of our threads with every signal blocked (it inherits the mask; so do the
    threads it starts): the host's signals (nginx's SIGCHLD, SIGIO, SIGTERM to its master) must
    reach the host's own threads, never ours."""
    import signal

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_module_thread() -> None:
    """First thing in each of the module's own threads: private OpenSSL, and marked as ours."""
    _ours.module_thread = True
    for hook in _thread_hooks:
        hook()
    enter()


_thread_stop: list[Callable[[], None] | None] = []  # [] not looked up yet; [None] not there


def stop_module_thread() -> None:
    """Last thing in each of the module's own threads: OpenSSL frees the thread's state now, while
    it is sure to be alive. Left to the thread-exit destructor, that could run after the host's
    exit handlers tore OpenSSL down, and crash the host (docs/design.md, "Threads")."""
    if not _thread_stop:
        found: Callable[[], None] | None = None
        try:
            import _ssl
            import ctypes

            found = ctypes.CDLL(getattr(_ssl, "__file__", None)).OPENSSL_thread_stop  # 1.1.0+
            found.restype = None
            found.argtypes = []
        except (AttributeError, ImportError, OSError):
            pass
        _thread_stop[:] = [found]
    stop = _thread_stop[0]
    if stop is not None:
        stop()


def is_module_thread() -> bool:
    return getattr(_ours, "module_thread", False)


@contextlib.contextmanager
def sigpipe_held() -> Iterator[None]:
    """Around socket work on a host's thread (docs/design.md, "Threads"): SIGPIPE is blocked, and
    one that this work raised is consumed, so a connection closed by KMS or a proxy cannot kill a
    host that keeps SIGPIPE's default disposition. One that was pending before stays pending."""
    import signal

    pipe = signal.SIGPIPE
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, (pipe,))
    pending_before = pipe in signal.sigpending()
    try:
        yield
    finally:
        if not pending_before and pipe in signal.sigpending():
            signal.sigtimedwait((pipe,), 0)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


_exit_flags: list[Callable[[], int]] = []


def add_exit_flag(flag: Callable[[], int]) -> None:
    """`flag()` says whether the process has begun to exit (the C side sets one at exit)."""
    _exit_flags.append(flag)


def exiting() -> bool:
    """Whether the process is exiting: then the module runs no loop, waits on nothing and closes
    no socket (docs/design.md, "Threads"); a C_Finalize only forgets the module's state."""
    return sys.is_finalizing() or any(flag() for flag in _exit_flags)


class _Probe:
    """Whether the host's OpenSSL has finished initialising, as seen from a thread of ours."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.started: float | None = None
        self.lock = threading.Lock()

    def run(self) -> None:
        start_module_thread()
        try:
            context = _library_context()
            if context is not None:
                context.init_ssl(_INIT_OPTIONS, None)  # waits while another thread loads the config
            self.done.set()
        finally:
            stop_module_thread()


_probe = _Probe()
_PROBE_GRACE = 0.2  # seconds: OpenSSL initialises in microseconds unless a load is in progress


def openssl_ready() -> bool:
    """Whether the module's own threads can initialise OpenSSL without waiting. The first question
    starts the probe and waits for it briefly; while a configuration load holds it longer, False
    (the caller then runs the KMS call on its own thread)."""
    import time

    probe = _probe
    if probe.done.is_set():
        return True
    with probe.lock:
        if probe.started is None:
            probe.started = time.monotonic()
            start_thread(threading.Thread(target=probe.run, name="pkcs11-kms-openssl",
                                          daemon=True))
    return probe.done.wait(max(0.0, probe.started + _PROBE_GRACE - time.monotonic()))


def _after_fork_in_child() -> None:
    global _probe, _context, _context_lock
    _context, _context_lock = None, threading.Lock()  # a dead thread may hold its OpenSSL locks
    if not _probe.done.is_set():  # its thread did not come along
        _probe = _Probe()


os.register_at_fork(after_in_child=_after_fork_in_child)
