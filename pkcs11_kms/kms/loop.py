"""The one asyncio event loop owning the KMS clients: in our daemon thread, or the caller's thread.

Threadless when the host passed CKF_LIBRARY_CANT_CREATE_OS_THREADS; fork-safe (DESIGN section 3).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .. import hostsafe

if TYPE_CHECKING:  # asyncio costs ~40 ms to import: only when a KMS call is made
    import asyncio

T = TypeVar("T")
logger = logging.getLogger("pkcs11_kms.kms")

_GRACE = 1.0  # seconds a caller waits past the in-loop deadline before giving up on the loop
_STOP_TIMEOUT = 5.0
_OWNER = "_pkcs11_kms_runner"  # attribute naming a loop's _Runner, for resources()


class DeadlineExceeded(TimeoutError):
    """The coroutine did not finish within run()'s timeout; it has been cancelled."""


class ReentrantCall(RuntimeError):
    """run() from inside a running call (a TLS library re-entering the module?): it cannot wait."""


class InterpreterExiting(RuntimeError):
    """run() during interpreter finalization (a host's C_Sign from a destructor at exit)."""


_threads_allowed = True


def set_threads_allowed(allowed: bool) -> None:
    """C_Initialize: False when the host forbids our own threads; takes effect on the next run()."""
    global _threads_allowed
    _threads_allowed = bool(allowed)


def threads_allowed() -> bool:
    return _threads_allowed


class _InlineWhenThreadless(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor (DNS, TLS context files, credential_process): a lazy thread
    pool, except that it runs the work inline while the loop runs on a host's thread (threadless,
    or before OpenSSL is ready: see run())."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        if hostsafe.is_module_thread():
            return super().submit(fn, *args, **kwargs)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # like a pool worker: the awaiting coroutine gets it
            future.set_exception(exc)
        return future


class _Runner:
    """One generation of the loop and what is bound to it (clients). A new generation starts after
    shutdown() or fork; an old one is closed by shutdown, or left untouched in a forked child."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.pid = os.getpid()
        self.lock = threading.RLock()  # start/stop, and driving the loop when threadless
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.resources: dict[Any, Any] = {}
        self.cleanups: list[Callable[[], Awaitable[object]]] = []
        self.closed = False

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            import asyncio

            loop = asyncio.new_event_loop()
            loop.set_default_executor(_InlineWhenThreadless(
                thread_name_prefix="pkcs11-kms-io", initializer=hostsafe.start_module_thread))
            setattr(loop, _OWNER, self)
            self.loop = loop
        return self.loop

    def _serve(self, ready: threading.Event) -> None:
        try:  # asyncio is imported here, on our own stack, not on a host thread's small one
            hostsafe.start_module_thread()
            import asyncio

            loop = self._ensure_loop()
            asyncio.set_event_loop(loop)
        finally:
            ready.set()
        loop.run_forever()  # idle in epoll between requests: no polling

    def run_threaded(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        thread, loop = self.thread, self.loop
        if thread is None or loop is None or not thread.is_alive():
            with self.lock:
                if self.closed:
                    return run(coro, timeout)
                if self.thread is None or not self.thread.is_alive():
                    ready = threading.Event()
                    self.thread = threading.Thread(
                        target=self._serve, args=(ready,), name="pkcs11-kms-loop", daemon=True
                    )
                    hostsafe.start_thread(self.thread)
                    ready.wait(_STOP_TIMEOUT)
                thread, loop = self.thread, self.loop
                if loop is None:
                    coro.close()
                    raise RuntimeError("the KMS event loop did not start")
        elif thread.ident == threading.get_ident():
            coro.close()
            raise ReentrantCall("KMS call from the event loop thread")
        import asyncio

        try:
            future = asyncio.run_coroutine_threadsafe(_bounded(coro, timeout), loop)
        except RuntimeError:  # the loop closed under us: shutdown() raced this call
            if self.closed:
                return run(coro, timeout)
            raise
        try:
            return future.result(timeout + _GRACE)  # waiting releases the GIL
        except TimeoutError:
            if future.done():
                raise  # the coroutine's own (DeadlineExceeded included)
            future.cancel()
            raise DeadlineExceeded(f"event loop did not answer within {timeout:.1f}s") from None

    def run_inline(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        import asyncio.events

        with self.lock:
            if self.closed:
                return run(coro, timeout)
            if self.thread is not None:  # was threaded: keep the loop, stop the thread
                self._stop_thread()
            loop = self._ensure_loop()
            if loop.is_running():
                coro.close()
                raise ReentrantCall("KMS call from inside a KMS call")
            # A Python host may run its own loop in this thread: it is blocked in this call anyway.
            host_loop = asyncio.events._get_running_loop()
            asyncio.events._set_running_loop(None)
            try:
                return loop.run_until_complete(_bounded(coro, timeout))
            finally:
                asyncio.events._set_running_loop(host_loop)

    def _stop_thread(self) -> None:
        thread, loop = self.thread, self.loop
        self.thread = None
        if thread is None or loop is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():  # stuck in a blocking call: leave it that loop and its clients
            logger.warning("KMS event loop thread did not stop; abandoning it")
            self.loop, self.resources, self.cleanups = None, {}, []

    def close(self, timeout: float) -> None:
        import asyncio

        with self.lock:
            self.closed = True
            loop = self.loop
            if loop is None or self.pid != os.getpid():
                return
            try:
                if self.thread is not None and self.thread.is_alive():
                    if self.thread.ident != threading.get_ident():
                        closing = asyncio.run_coroutine_threadsafe(self._aclose(timeout), loop)
                        closing.result(timeout + _GRACE)
                    self._stop_thread()
                elif not loop.is_running():
                    loop.run_until_complete(self._aclose(timeout))
            except Exception as exc:  # closing is best effort: the process may be on its way out
                logger.debug("closing KMS clients failed: %r", exc)
            if self.loop is loop and not loop.is_running():
                loop.close()

    async def _aclose(self, timeout: float) -> None:
        import asyncio

        async with asyncio.timeout(timeout):
            cleanups, self.cleanups = self.cleanups, []
            for cleanup in reversed(cleanups):
                try:
                    await cleanup()
                except Exception as exc:
                    logger.debug("KMS client cleanup failed: %r", exc)
            self.resources.clear()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # calls still in flight at C_Finalize end as "Cancelled"
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)


async def _bounded(coro: Coroutine[Any, Any, T], timeout: float) -> T:
    import asyncio

    try:
        async with asyncio.timeout(timeout) as scope:
            return await coro
    except TimeoutError:
        if scope.expired():
            raise DeadlineExceeded(f"no answer within {timeout:.1f}s") from None
        raise


_runner = _Runner(0)


def _current() -> _Runner:
    runner = _runner
    if runner.pid != os.getpid():  # forked by a path that skipped our at-fork hook
        _after_fork_in_child()
        runner = _runner
    return runner


def _after_fork_in_child() -> None:
    """Start a new generation, and keep the inherited one alive and untouched forever: closing its
    sockets or selector here would unregister them from the epoll set the parent still uses."""
    global _runner
    inherited = _runner
    if inherited.pid == os.getpid():
        return
    _runner = _Runner(inherited.generation + 1)
    if inherited.loop is not None:
        _keep_forever(inherited)


_kept: list[object] = []


def _keep_forever(obj: object) -> None:
    _kept.append(obj)
    try:  # one reference no finalizer owns: interpreter exit will not run its destructors either
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
    except Exception:  # no ctypes: the list above still holds it until exit
        pass


os.register_at_fork(after_in_child=_after_fork_in_child)


def run(coro: Coroutine[Any, Any, T], timeout: float) -> T:
    """Run a coroutine on the KMS loop and wait for its result, at most `timeout` seconds.

    Raises what the coroutine raises, DeadlineExceeded when time runs out (the coroutine is
    cancelled), ReentrantCall when called from inside the loop, InterpreterExiting at exit.
    """
    if sys.is_finalizing():  # our thread is frozen for good: do not wait on it
        coro.close()
        raise InterpreterExiting("the interpreter is exiting")
    runner = _current()
    # While the host's OpenSSL is still loading its configuration (pkcs11-provider's early load
    # calls us from inside it), our threads would wait for that load to end, and so for their own
    # caller: the call runs on the caller's thread instead (docs/design.md, "Inside OpenSSL").
    if _threads_allowed and hostsafe.openssl_ready():
        return runner.run_threaded(coro, timeout)
    return runner.run_inline(coro, timeout)


def generation() -> int:
    """Changes whenever the loop is replaced (after shutdown or fork)."""
    return _current().generation


def _owner() -> _Runner:
    import asyncio

    runner: _Runner | None = getattr(asyncio.get_running_loop(), _OWNER, None)
    if runner is None:
        raise RuntimeError("not running on the KMS loop")
    return runner


def resources() -> dict[Any, Any]:
    """State bound to the running KMS loop (clients): call only from a coroutine given to run()."""
    return _owner().resources


def add_cleanup(cleanup: Callable[[], Awaitable[object]]) -> None:
    """Have shutdown() await `cleanup()` on the running KMS loop (to close a client)."""
    _owner().cleanups.append(cleanup)


def shutdown(timeout: float = _STOP_TIMEOUT) -> None:
    """C_Finalize: close the clients and stop the loop thread; the next run() starts afresh.

    Does nothing while the interpreter is finalizing: daemon threads are frozen then, and waiting on
    one would hang the host.
    """
    global _runner
    if sys.is_finalizing():
        return
    old = _current()
    _runner = _Runner(old.generation + 1)
    old.close(timeout)
