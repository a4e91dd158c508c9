"""The asyncio event loops owning the KMS clients: one in our daemon thread, or a pool of loops
driven by the callers' own threads (docs/design.md, "Threads").

Threadless when the host passed CKF_LIBRARY_CANT_CREATE_OS_THREADS; fork-safe (docs/design.md, "Fork during import").
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from .. import forking, hostsafe  # noqa: F401 - forking registers its fork hooks first

T = TypeVar("T")
P = ParamSpec("P")
logger = logging.getLogger("pkcs11_kms.kms")

_GRACE = 1.0  # seconds a caller waits past the in-loop deadline before giving up on the loop
_STOP_TIMEOUT = 5.0
_OWNER = "_pkcs11_kms_loop"  # attribute naming an asyncio loop's _Loop, for resources()


class DeadlineExceeded(TimeoutError):
    """The coroutine did not finish within run()'s timeout; it has been cancelled."""


class ReentrantCall(RuntimeError):
    """run() from inside a running call (a TLS library re-entering the module?): it cannot wait."""


class InterpreterExiting(RuntimeError):
    """run() once the process is exiting (a host's C_Sign from an exit handler or destructor)."""


_threads_allowed = True


def set_threads_allowed(allowed: bool) -> None:
    """C_Initialize: False when the host forbids our own threads; takes effect on the next run()."""
    global _threads_allowed
    _threads_allowed = bool(allowed)


def threads_allowed() -> bool:
    return _threads_allowed


class _Helpers(concurrent.futures.ThreadPoolExecutor):  # asyncio accepts no other kind
    """The loop's default executor (DNS, TLS context files, credential_process). While the loop
    runs on a host's thread (threadless, or before OpenSSL is ready: see run()) the work runs
    inline; on our loop thread, each call gets a short-lived thread of ours, which releases its
    OpenSSL state before it ends and which close() joins: no thread of the module is still ending
    when C_Finalize has returned (docs/design.md, "Threads")."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)  # its own pool starts no thread: submit() is ours
        self._running_lock = threading.Lock()
        self._running: set[threading.Thread] = set()

    def submit(self, fn: Callable[P, T], /, *args: P.args,
               **kwargs: P.kwargs) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if not hostsafe.is_module_thread():
            _settle(future, fn, args, kwargs)
            return future

        def work() -> None:
            hostsafe.start_module_thread()
            try:
                _settle(future, fn, args, kwargs)
            finally:
                hostsafe.stop_module_thread()
                with self._running_lock:
                    self._running.discard(thread)

        thread = threading.Thread(target=work, name="pkcs11-kms-io", daemon=True)
        with self._running_lock:
            self._running.add(thread)
        hostsafe.start_thread(thread)
        return future

    def join(self, timeout: float) -> None:
        """Waits for the calls in flight, at most `timeout` seconds in all."""
        deadline = time.monotonic() + timeout
        with self._running_lock:
            threads = list(self._running)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _settle(future: concurrent.futures.Future[T], fn: Callable[..., T],
            args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn(*args, **kwargs))
    except BaseException as exc:  # like a pool worker: the awaiting coroutine gets it
        future.set_exception(exc)


class _Loop:
    """One asyncio loop and what is bound to it: the clients (resources) and their cleanups."""

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.helpers = _Helpers()
        self.loop.set_default_executor(self.helpers)
        setattr(self.loop, _OWNER, self)
        self.resources: dict[Any, Any] = {}
        self.cleanups: list[Callable[[], Awaitable[object]]] = []
        self.closing = False

    def drive(self, coro: Coroutine[Any, Any, T], timeout: float, catch_up: bool = True) -> T:
        """Runs the coroutine on this loop on the calling (host) thread."""
        import asyncio
        import asyncio.events

        # A Python host may run its own loop in this thread: it is blocked in this call anyway.
        host_loop = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(None)
        _driving.loop = self
        try:
            with hostsafe.sigpipe_held():
                # Nobody ran this loop since its last call: first let it see the connections KMS
                # closed meanwhile and the keep-alives that expired (one pass, ~50 us), so that
                # the call does not send its request on a dead connection.
                if catch_up:
                    self.loop.run_until_complete(asyncio.sleep(0))
                return self.loop.run_until_complete(_bounded(coro, timeout))
        finally:
            _driving.loop = None
            asyncio.events._set_running_loop(host_loop)

    def cancel_all(self) -> None:
        """On this loop (call_soon_threadsafe): calls in flight at C_Finalize end as "Cancelled"."""
        import asyncio

        if self.closing:  # came after the call it was meant for: aclose() cancels what is left
            return
        for task in asyncio.all_tasks(self.loop):
            task.cancel()

    def close_inline(self, timeout: float) -> None:
        """Closes the clients on the calling thread, then the loop (which must not be running)."""
        if self.loop.is_closed() or self.loop.is_running():
            return
        self.closing = True
        try:
            self.drive(self.aclose(timeout), timeout + _GRACE, catch_up=False)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # best effort: the process may be on its way out
            logger.debug("closing KMS clients failed: %r", exc)
        self.loop.close()
        self.helpers.join(timeout)

    async def aclose(self, timeout: float) -> None:
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


_driving = threading.local()  # .loop: the _Loop this host thread is driving now, if any


class _Runner:
    """One generation of the loops and what is bound to them (clients). A new generation starts
    after shutdown() or fork; an old one is closed by shutdown, or left untouched in a forked child.

    Threaded: one loop in our daemon thread serves every caller. Threadless (and before OpenSSL is
    ready): a pool of loops; a caller takes an idle one (or makes one: as many loops as calls at
    once) and drives it on its own thread, so a slow call delays only its own caller. No lock is
    held across a KMS call in either mode."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.pid = os.getpid()
        self.lock = threading.Lock()  # the fields below; never held across a KMS call
        self.served: _Loop | None = None  # the loop of our thread
        self.thread: threading.Thread | None = None
        self.idle: list[_Loop] = []  # loops for host threads to drive, each with its own clients
        self.busy: set[_Loop] = set()  # driven by a host thread now
        self.closed = False

    def _serve(self, ready: threading.Event) -> None:
        hostsafe.start_module_thread()
        try:
            try:  # asyncio is imported here, on our own stack, not on a host thread's small one
                import asyncio

                served = self.served = _Loop()
                asyncio.set_event_loop(served.loop)
            finally:
                ready.set()
            served.loop.run_forever()  # idle in epoll between requests: no polling
            asyncio.set_event_loop(None)
        finally:
            hostsafe.stop_module_thread()

    def run_threaded(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        thread, served = self.thread, self.served
        if thread is None or served is None or not thread.is_alive():
            with self.lock:
                if self.closed:
                    return run(coro, timeout)
                if self.thread is None or not self.thread.is_alive():
                    ready = threading.Event()
                    self.served = None
                    self.thread = threading.Thread(
                        target=self._serve, args=(ready,), name="pkcs11-kms-loop", daemon=True
                    )
                    hostsafe.start_thread(self.thread)
                    ready.wait(_STOP_TIMEOUT)
                thread, served = self.thread, self.served
                if served is None:
                    coro.close()
                    raise RuntimeError("the KMS event loop did not start")
        elif thread.ident == threading.get_ident():
            coro.close()
            raise ReentrantCall("KMS call from the event loop thread")
        import asyncio

        try:
            future = asyncio.run_coroutine_threadsafe(_bounded(coro, timeout), served.loop)
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
        if getattr(_driving, "loop", None) is not None:
            coro.close()
            raise ReentrantCall("KMS call from inside a KMS call")
        taken = self._take()
        if taken is None:  # shutdown() came first
            return run(coro, timeout)
        try:
            return taken.drive(coro, timeout)
        finally:
            self._give_back(taken)

    def _take(self) -> _Loop | None:
        with self.lock:
            if self.closed:
                return None
            if not _threads_allowed and self.thread is not None:
                self._stop_thread()  # the host forbids threads now: keep the loop, stop the thread
            if self.idle:
                taken = self.idle.pop()
                self.busy.add(taken)
                return taken
        taken = _Loop()  # not under the lock: the first one imports asyncio
        with self.lock:
            if self.closed:
                taken.loop.close()
                return None
            self.busy.add(taken)
        return taken

    def _give_back(self, taken: _Loop) -> None:
        with self.lock:
            self.busy.discard(taken)
            if not self.closed:
                self.idle.append(taken)
                return
        if self.pid == os.getpid() and not hostsafe.exiting():  # shutdown() left it to us
            taken.close_inline(_STOP_TIMEOUT)

    def _stop_thread(self) -> None:
        """Under the lock (a host switched to threadless): stop our thread; its loop (and
        clients) join the idle pool."""
        thread, served = self.thread, self.served
        self.thread = self.served = None
        if served is not None and _halt(thread, served):
            self.idle.append(served)

    def close(self, timeout: float) -> None:
        """shutdown(): close every loop's clients. A loop a host thread is driving gets its calls
        cancelled; that thread closes it when its call returns. The lock is not held while
        waiting: host threads still finishing a call give their loop back meanwhile."""
        deadline = time.monotonic() + timeout
        with self.lock:
            self.closed = True
            if self.pid != os.getpid():
                return
            thread, served = self.thread, self.served
            self.thread = self.served = None
            idle, self.idle = self.idle, []
            busy = list(self.busy)
        if thread is not None and served is not None and thread.is_alive() \
                and thread.ident != threading.get_ident():
            import asyncio  # here only: a module that never called KMS has not imported it

            try:
                closing = asyncio.run_coroutine_threadsafe(served.aclose(timeout), served.loop)
                closing.result(timeout + _GRACE)
            except Exception as exc:  # best effort: the process may be on its way out
                logger.debug("closing KMS clients failed: %r", exc)
            if _halt(thread, served):
                idle.append(served)  # its loop and helper threads are closed below
        for taken in busy:
            try:
                taken.loop.call_soon_threadsafe(taken.cancel_all)
            except RuntimeError:  # closed meanwhile
                pass
        for loop in idle:
            loop.close_inline(max(0.1, deadline - time.monotonic()))


def _halt(thread: threading.Thread | None, served: _Loop | None) -> bool:
    """Stops our loop thread and waits for it; False when it was not running or did not stop."""
    if thread is None or served is None or not thread.is_alive():
        return False
    served.loop.call_soon_threadsafe(served.loop.stop)
    thread.join(_STOP_TIMEOUT)
    if thread.is_alive():  # stuck in a blocking call: leave it that loop and its clients
        logger.warning("KMS event loop thread did not stop; abandoning it")
        return False
    return True


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
    sockets or selectors here would unregister them from the epoll sets the parent still uses."""
    global _runner
    inherited = _runner
    if inherited.pid == os.getpid():
        return
    _runner = _Runner(inherited.generation + 1)
    _driving.loop = None  # the forking thread was not inside a KMS call (C refuses re-entry)
    if inherited.served is not None or inherited.idle or inherited.busy:
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
    """Run a coroutine on a KMS loop and wait for its result, at most `timeout` seconds.

    Raises what the coroutine raises, DeadlineExceeded when time runs out (the coroutine is
    cancelled), ReentrantCall when called from inside a KMS call, InterpreterExiting at exit.
    """
    if hostsafe.exiting():  # our thread is frozen for good, OpenSSL may be gone: do not run
        coro.close()
        raise InterpreterExiting("the process is exiting")
    runner = _current()
    # While the host's OpenSSL is still loading its configuration (pkcs11-provider's early load
    # calls us from inside it), our threads would wait for that load to end, and so for their own
    # caller: the call runs on the caller's thread instead (docs/design.md, "Inside OpenSSL").
    if _threads_allowed and hostsafe.openssl_ready():
        return runner.run_threaded(coro, timeout)
    return runner.run_inline(coro, timeout)


def generation() -> int:
    """Changes whenever the loops are replaced (after shutdown or fork)."""
    return _current().generation


def _owner() -> _Loop:
    import asyncio

    owner: _Loop | None = getattr(asyncio.get_running_loop(), _OWNER, None)
    if owner is None:
        raise RuntimeError("not running on a KMS loop")
    return owner


def resources() -> dict[Any, Any]:
    """State bound to the running KMS loop (clients): call only from a coroutine given to run()."""
    return _owner().resources


def add_cleanup(cleanup: Callable[[], Awaitable[object]]) -> None:
    """Have shutdown() await `cleanup()` on the running KMS loop (to close a client)."""
    _owner().cleanups.append(cleanup)


def shutdown(timeout: float = _STOP_TIMEOUT) -> None:
    """C_Finalize: close the clients and stop the loop thread; the next run() starts afresh.

    Does nothing once the process is exiting (docs/design.md, "Threads"): our thread is frozen
    then, or would run while OpenSSL is torn down; waiting on it could hang the host.
    """
    global _runner
    if hostsafe.exiting():
        return
    old = _current()
    _runner = _Runner(old.generation + 1)
    old.close(timeout)
