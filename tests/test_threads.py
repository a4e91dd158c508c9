"""Threads, signals and exit (docs/design.md, "Threads"). From the C harness over HTTPS: many
threads signing at once in both threading modes, requests that overlap, a hung request that delays
only its own caller, C_Finalize from a host's exit handler. In Python: SIGPIPE on a host's thread,
a connection closed between two calls, C_Finalize while another thread's call is in flight.

The full acceptance run is 64 threads x 1,000 signatures in each mode:
    PKCS11_KMS_THREADS=64 PKCS11_KMS_CALLS=1000 pytest tests/test_threads.py -k many_threads
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from keyseed import seed_key, write_config

THREADED, THREADLESS = "2", "3"  # CKF_OS_LOCKING_OK, | CKF_LIBRARY_CANT_CREATE_OS_THREADS
MODES = pytest.mark.parametrize("flags", [THREADED, THREADLESS], ids=["threads", "threadless"])
THREADS = int(os.environ.get("PKCS11_KMS_THREADS", "8"))
CALLS = int(os.environ.get("PKCS11_KMS_CALLS", "25"))


@pytest.fixture(scope="module")
def setup(https_kms_server, tmp_path_factory, module_path):
    """One P-256 signing key on a token over HTTPS. A long read timeout: a request the emulator
    holds stays pending until the test releases it."""
    key = seed_key(https_kms_server.client(), None, "ECC_NIST_P256", "SIGN_VERIFY")
    d = tmp_path_factory.mktemp("threads")
    config = write_config(d / "config.toml", https_kms_server,
                          f'read_timeout = 300\n[[token]]\nlabel = "threads"\n'
                          f'keys = ["{key.arn}"]\n')
    env = {**os.environ, "PKCS11_KMS_CONFIG": config}
    public = serialization.load_der_public_key(key.public_der)
    return https_kms_server, env, module_path, public, d


@pytest.fixture
def kms(setup):
    server = setup[0]
    server.clear_faults()
    yield server
    server.clear_faults()


def run(harness, setup, *args, timeout=600):
    _, env, module, _, _ = setup
    proc = subprocess.run([harness, module, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, f"rc={proc.returncode} out={proc.stdout!r} err={proc.stderr!r}"
    return proc.stdout.splitlines()


def verify_all(public, path: Path, threads: int, calls: int) -> None:
    """Every (thread, call) signed once, its own data, each signature valid for that data."""
    seen = set()
    for line in path.read_text().splitlines():
        thread, call, rv, data, signature = line.split(" ")
        assert rv == "0", line
        data_bytes, raw = bytes.fromhex(data), bytes.fromhex(signature)
        assert data_bytes.startswith(f"thread {thread} call {call} ".encode())
        der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                         int.from_bytes(raw[32:], "big"))
        try:
            public.verify(der, data_bytes, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        except InvalidSignature:
            pytest.fail(f"signature of thread {thread} call {call} does not verify")
        seen.add((int(thread), int(call)))
    assert seen == {(t, c) for t in range(threads) for c in range(calls)}


def signed_line(threads: int, calls: int) -> re.Pattern[str]:
    total = threads * calls
    return re.compile(rf"sign-threads ok={total} of {total} errors=0 first_rv=0x0 elapsed_ms=\d+")


@MODES
def test_many_threads_sign_and_every_signature_verifies(harness, setup, kms, flags):
    out = setup[4] / f"many-{flags}.txt"
    lines = run(harness, setup, "sign-threads", flags, str(THREADS), str(CALLS), str(out),
                timeout=max(600, THREADS * CALLS // 20))
    assert lines[:2] == ["C_Initialize rv=0x0", "key rv=0x0"], lines
    assert signed_line(THREADS, CALLS).fullmatch(lines[2]), lines
    assert lines[3] == "C_Finalize rv=0x0"
    print(flags, lines[2])  # the figure, with -s
    verify_all(setup[3], out, THREADS, CALLS)


@MODES
def test_requests_from_threads_overlap_at_kms(harness, setup, kms, flags):
    """With 20 ms per Sign, 16 threads have several requests at KMS at once in both modes (the
    threadless mode used to drive one loop under one lock: one request at a time)."""
    kms.set_faults(latency_ms=20, operations=["Sign"])
    out = setup[4] / f"overlap-{flags}.txt"
    lines = run(harness, setup, "sign-threads", flags, "16", "3", str(out))
    assert signed_line(16, 3).fullmatch(lines[2]), lines
    stats = kms.faults()["stats"]
    assert stats["delayed"] == 48, stats
    assert stats["max_in_flight"] > 1, stats
    verify_all(setup[3], out, 16, 3)


@MODES
def test_a_hung_request_delays_only_its_own_caller(harness, setup, kms, flags):
    """The emulator holds the first Sign until released: the 7 other threads make all their
    calls meanwhile; then the held one completes too (its dropped connection is retried)."""
    kms.set_faults(hang_rate=1.0, max_faults=1, hang_ms=300_000, operations=["Sign"])
    _, env, module, public, d = setup
    out = d / f"hang-{flags}.txt"
    errors = d / f"hang-{flags}.err"
    with errors.open("w") as err_file:
        proc = subprocess.Popen([harness, module, "hang", flags, "8", "10", str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=err_file, text=True,
                                stdin=subprocess.DEVNULL)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line.rstrip("\n"))
        lines.put("")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        got = []
        while not got or not got[-1].startswith("others done="):
            got.append(lines.get(timeout=180))
            assert got[-1], f"the harness ended early: {got}"
        assert got[-1] == "others done=7 of 8", got
        stats = kms.faults()["stats"]
        assert stats["hangs"] == 1, stats  # the one call not done yet is the held one
        kms.clear_faults()  # releases it
        proc.wait(timeout=180)
        reader.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    err = errors.read_text()
    assert "Traceback" not in err, err
    assert proc.returncode == 0, (got, rest, err)
    assert signed_line(8, 10).fullmatch(rest[0]), rest
    verify_all(public, out, 8, 10)


@MODES
def test_finalize_from_the_hosts_exit_handler(harness, setup, kms, flags):
    """A host's exit handler calls C_Finalize after the module's own exit handler and OpenSSL's
    cleanup: it only forgets the module's state (no loop runs, no socket is closed, nothing is
    waited for). Several runs: a race would show now and then."""
    for _ in range(3):
        lines = run(harness, setup, "exit-finalize", flags, "8", timeout=60)
        assert lines[:2] == ["C_Initialize rv=0x0", "signed ok=16 of 16"], lines
        assert len(lines) == 5 and re.fullmatch(r"C_Finalize at exit rv=0x0 ms=\d+", lines[3]), \
            lines
        before, after = lines[2], lines[4]
        assert re.fullmatch(r"sockets before=\d+", before), lines
        assert int(before.split("=")[1]) >= 2, lines  # at least a loop's wake-up pair
        assert after == before.replace("before", "after"), lines  # nothing was closed
        assert int(lines[3].rsplit("=", 1)[1]) < 1000, lines  # nothing was waited for


SIGPIPE_PROBE = """
import os, signal, threading
from pkcs11_kms import hostsafe
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # a C host's disposition: SIGPIPE kills
me = threading.get_ident()
with hostsafe.sigpipe_held():
    signal.pthread_kill(me, signal.SIGPIPE)  # as a write to a closed connection raises it
print("ours consumed", signal.SIGPIPE not in signal.sigpending())
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGPIPE])
signal.pthread_kill(me, signal.SIGPIPE)  # the host's own, pending before the call
with hostsafe.sigpipe_held():
    pass
print("host's kept", signal.SIGPIPE in signal.sigpending())
print("mask restored", signal.SIGPIPE in signal.pthread_sigmask(signal.SIG_BLOCK, []))
"""


def test_sigpipe_raised_on_a_host_thread_is_consumed():
    proc = subprocess.run([sys.executable, "-c", SIGPIPE_PROBE], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.splitlines() == ["ours consumed True", "host's kept True",
                                        "mask restored True"]


CLOSED_WHILE_IDLE = """
import http.server, sys, threading
from pkcs11_kms.kms import loop

closed, release = threading.Event(), threading.Event()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the answer says keep-alive; then the server closes anyway

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
        self.close_connection = True

    def finish(self):
        release.wait(10)  # after the client's call returned: its loop is not running now
        super().finish()
        self.connection.close()
        closed.set()

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_address[1]}/"
loop.set_threads_allowed(sys.argv[1] == "threads")

async def post():
    import aiohttp
    if "session" not in loop.resources():
        loop.resources()["session"] = session = aiohttp.ClientSession()
        loop.add_cleanup(session.close)
    async with loop.resources()["session"].post(url, data=b"x") as answer:
        return await answer.text()

for _ in range(3):
    closed.clear()
    release.clear()
    print(loop.run(post(), 10))
    release.set()
    assert closed.wait(10)  # the kept-alive connection is closed now; the loop did not run since
loop.shutdown()
"""


@pytest.mark.parametrize("mode", ["threads", "threadless"])
def test_a_connection_closed_between_calls_is_not_reused(mode):
    """KMS (or a proxy) closes an idle keep-alive connection: in threadless mode no one runs the
    caller's loop between calls, so the next call must first let it see the close."""
    proc = subprocess.run([sys.executable, "-c", CLOSED_WHILE_IDLE, mode], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", "ok", "ok"]


SHUTDOWN_WHILE_DRIVEN = """
import asyncio, threading
from pkcs11_kms.kms import loop

loop.set_threads_allowed(False)
started, cleaned, outcome = threading.Event(), [], []

async def wait_long():
    async def cleanup():
        cleaned.append(threading.current_thread().name)
    loop.add_cleanup(cleanup)
    started.set()
    await asyncio.sleep(60)

def caller():
    try:
        loop.run(wait_long(), 120)
    except BaseException as exc:
        outcome.append(type(exc).__name__)

async def quick():
    return "quick"

other = threading.Thread(target=caller, name="host-thread")
other.start()
assert started.wait(30)
print(loop.run(quick(), 10))  # another loop of the pool serves this thread meanwhile
loop.shutdown()  # cancels the call in flight; its thread closes its loop
other.join(30)
print(not other.is_alive(), outcome, cleaned)
"""


def test_shutdown_cancels_a_call_in_flight_on_another_threads_loop():
    proc = subprocess.run([sys.executable, "-c", SHUTDOWN_WHILE_DRIVEN], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["quick", "True ['CancelledError'] ['host-thread']"]


@MODES
def test_sixty_four_threads_do_not_queue_for_a_connection(harness, setup, kms, flags):
    """64 threads at once each have their request at KMS at the same time: no connection pool
    (threaded: one client's; threadless: one client per loop) makes them take turns."""
    kms.set_faults(latency_ms=2000, operations=["Sign"])
    lines = run(harness, setup, "sign-threads", flags, "64", "1", str(setup[4] / "64.txt"))
    assert signed_line(64, 1).fullmatch(lines[2]), lines
    stats = kms.faults()["stats"]
    assert stats["max_in_flight"] == 64, stats
