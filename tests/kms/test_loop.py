"""The KMS event loop: threaded and threadless runs, deadlines, re-entry, shutdown, fork."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from pkcs11_kms import hostsafe
from pkcs11_kms.kms import loop

from .kmstest import b64, fork_while_busy

pytestmark = pytest.mark.usefixtures("fresh_loop")


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pkcs11-kms")]


async def answer(value, delay=0.0):
    await asyncio.sleep(delay)
    return value


async def fail():
    raise KeyError("from the loop")


@pytest.mark.parametrize("threads", [True, False])
def test_run_returns_and_raises(threads):
    loop.set_threads_allowed(threads)
    assert loop.run(answer(42), 5) == 42
    with pytest.raises(KeyError):
        loop.run(fail(), 5)


@pytest.mark.parametrize("threads", [True, False])
def test_deadline_cancels_the_coroutine(threads):
    loop.set_threads_allowed(threads)
    cancelled = threading.Event()

    async def hang():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    start = time.monotonic()
    with pytest.raises(loop.DeadlineExceeded):
        loop.run(hang(), 0.2)
    assert time.monotonic() - start < 1.5
    assert cancelled.wait(2)
    assert loop.run(answer("still usable"), 5) == "still usable"


def test_a_coroutine_timeout_is_not_our_deadline():
    async def own_timeout():
        raise TimeoutError("the coroutine's own")

    with pytest.raises(TimeoutError) as caught:
        loop.run(own_timeout(), 5)
    assert not isinstance(caught.value, loop.DeadlineExceeded)


@pytest.mark.parametrize("threads", [True, False])
def test_reentry_fails_instead_of_deadlocking(threads):
    loop.set_threads_allowed(threads)

    async def reenter():
        return loop.run(answer(1), 5)

    start = time.monotonic()
    with pytest.raises(loop.ReentrantCall):
        loop.run(reenter(), 5)
    assert time.monotonic() - start < 1


def test_one_daemon_thread_serves_concurrent_callers():
    results = []

    def call(i):
        results.append(loop.run(answer(i, 0.2), 5))

    callers = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    start = time.monotonic()
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert sorted(results) == list(range(8))
    assert time.monotonic() - start < 1.0  # 8 x 0.2 s overlapped
    (thread,) = [t for t in loop_threads() if t.name == "pkcs11-kms-loop"]
    assert thread.daemon


def test_threadless_runs_in_the_callers_thread():
    loop.set_threads_allowed(False)

    async def where():
        await asyncio.to_thread(lambda: None)  # the loop's executor must not start a thread either
        return threading.get_ident()

    results = []
    callers = [threading.Thread(target=lambda: results.append(
        (threading.get_ident(), loop.run(where(), 5)))) for _ in range(4)]  # fmt: skip
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(results) == 4 and all(caller == ran for caller, ran in results)
    assert loop_threads() == []


def test_switching_modes_keeps_the_loop():
    assert loop.run(answer(1), 5) == 1
    generation = loop.generation()
    loop.set_threads_allowed(False)
    assert loop.run(answer(2), 5) == 2
    assert not [t for t in loop_threads() if t.name == "pkcs11-kms-loop"]
    loop.set_threads_allowed(True)
    assert loop.run(answer(3), 5) == 3
    assert loop.generation() == generation


def test_shutdown_awaits_cleanups_and_restarts_lazily():
    closed = []

    async def register():
        async def cleanup():
            closed.append(True)

        loop.add_cleanup(cleanup)
        loop.resources()["thing"] = 1

    loop.run(register(), 5)
    generation = loop.generation()
    loop.shutdown()
    assert closed == [True]
    assert not [t for t in loop_threads() if t.name == "pkcs11-kms-loop" and t.is_alive()]
    assert loop.generation() == generation + 1

    async def fresh():
        return dict(loop.resources())

    assert loop.run(fresh(), 5) == {}


def test_shutdown_ends_every_thread_of_ours(monkeypatch):
    """C_Finalize returns only when the loop thread and the helper threads (DNS) have ended, each
    after releasing its OpenSSL state: left to a thread-exit destructor, that could run after the
    host's exit tore OpenSSL down (one SIGSEGV in 1,000 cold pkcs11-tool runs before)."""
    stopped = []
    release = hostsafe.stop_module_thread

    def stop():
        stopped.append(threading.current_thread().name)
        release()

    monkeypatch.setattr(hostsafe, "stop_module_thread", stop)

    async def lookup():
        return await asyncio.get_running_loop().run_in_executor(
            None, socket.getaddrinfo, "127.0.0.1", 443)

    finish = threading.Event()

    async def leave_one_running():  # a lookup still in flight at C_Finalize is waited for
        asyncio.get_running_loop().run_in_executor(None, finish.wait, 10)

    assert loop.run(lookup(), 5)
    loop.run(leave_one_running(), 5)
    ours = loop_threads()
    assert {"pkcs11-kms-loop", "pkcs11-kms-io"} <= {t.name for t in ours}
    threading.Timer(0.2, finish.set).start()
    loop.shutdown()
    assert not [t.name for t in ours if t.is_alive()]
    assert "pkcs11-kms-io" in stopped and "pkcs11-kms-loop" in stopped


def test_shutdown_does_nothing_while_finalizing(monkeypatch):
    loop.run(answer(1), 5)
    (thread,) = [t for t in loop_threads() if t.name == "pkcs11-kms-loop"]
    monkeypatch.setattr(sys, "is_finalizing", lambda: True)
    loop.shutdown()
    assert thread.is_alive()
    monkeypatch.undo()


def test_idle_loop_does_not_poll():
    loop.run(answer(1), 5)
    start = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - start < 0.05


def test_resources_only_on_the_loop():
    with pytest.raises(RuntimeError):
        loop.resources()


def test_pid_check_catches_a_fork_the_hook_missed():
    stale = loop._Runner(100)
    stale.pid = -1  # as if inherited through a fork that skipped os.register_at_fork hooks
    loop._runner = stale  # the fixture's shutdown closes the runner made in its place
    assert loop.run(answer("fresh"), 5) == "fresh"
    assert loop.generation() == 101


def test_fork_while_threads_run():
    """Children forked while 4 threads wait on the loop get their own loop and finish."""
    fork_while_busy(lambda: loop.run(answer(1, 0.005), 5),
                    lambda: loop.run(answer("child", 0.01), 5) == "child", children=10)


def test_child_exit_leaves_the_parents_connections_alone(scripted):
    """A child that exits normally (interpreter finalization) after inheriting a loop with open
    keep-alive connections must not unregister them from the epoll set the parent shares."""
    scripted.reply("GenerateRandom", {"Plaintext": b64(bytes(8))})  # keep-alive HTTP/1.1
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from pkcs11_kms.kms import AwsKms, Connection
        kms = AwsKms(Connection(region="eu-west-1", endpoint_url="{scripted.endpoint_url}",
                                read_timeout=2, max_attempts=1))
        for _ in range(3):
            kms.generate_random(8)
        pid = os.fork()
        if pid == 0:
            kms.generate_random(8)
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        start = time.monotonic()
        for _ in range(5):
            kms.generate_random(8)
        assert time.monotonic() - start < 1.5, time.monotonic() - start
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_no_waiting_on_a_frozen_thread_at_exit(monkeypatch):
    loop.run(answer(1), 5)
    monkeypatch.setattr(sys, "is_finalizing", lambda: True)
    start = time.monotonic()
    with pytest.raises(loop.InterpreterExiting):
        loop.run(answer(2), 30)
    assert time.monotonic() - start < 0.5


def test_asyncio_is_first_imported_on_the_loop_thread():
    code = (
        "import sys, threading\n"
        "from pkcs11_kms.kms import loop\n"
        "seen = []\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'asyncio': seen.append(threading.current_thread().name)\n"
        "sys.meta_path.insert(0, Spy())\n"
        "async def one(): return 1\n"
        "assert loop.run(one(), 5) == 1\n"
        "print(seen)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['pkcs11-kms-loop']"
