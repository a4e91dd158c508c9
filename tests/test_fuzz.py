"""The fuzz host (tests/harness/fuzz.c): every PKCS#11 function called with NULL and wild pointers,
bad handles, wrong lengths, malformed templates and mechanisms, and out of order. No crash, no
hang, every return code in the function's allowed set (pkcs11_kms.core.returns), and a valid ECDSA
signature every 200 calls.

CI runs CALLS calls for each of two fixed seeds; PKCS11_KMS_FUZZ_CALLS sets another count. The
full run (>= 100,000 calls) is bench/fuzz.py.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from hosts import build_c_host
from keyseed import write_config

ROOT = Path(__file__).resolve().parent.parent
CALLS = int(os.environ.get("PKCS11_KMS_FUZZ_CALLS", "10000"))
SEEDS = (20261202, 7)
CANARY_EVERY = 200
SUMMARY = re.compile(
    r"^fuzz seed=(?P<seed>\d+) calls=(?P<calls>\d+) seconds=(?P<seconds>[\d.]+) crashes=0 hangs=0 "
    r"violations=(?P<violations>\d+) canaries=(?P<canaries>\d+) "
    r"canaries_failed=(?P<canaries_failed>\d+)", re.M)


def write_allowed(out: Path) -> str:
    """`python -m pkcs11_kms.core.returns`: one `C_Name 0x0 0x5 ...` line per function."""
    text = subprocess.run([sys.executable, "-m", "pkcs11_kms.core.returns"], check=True,
                          capture_output=True, text=True, timeout=60, cwd=ROOT).stdout
    out.write_text(text)
    return str(out)


def fuzz_config(path: Path, kms_server, keys) -> str:
    """Two tokens, so two slots: the RSA sign, EC sign and RSA decrypt keys; the EC key again."""
    return write_config(
        path, kms_server,
        '[[token]]\nlabel = "fuzz"\n'
        f'keys = ["{keys["web-tls"].arn}", "{keys["ec-sign"].arn}", '
        f'{{ key = "{keys["decrypt"].key_id}", label = "decrypt" }}]\n'
        '[[token]]\nlabel = "other"\n'
        f'keys = [{{ key = "{keys["ec-sign"].key_id}", label = "ec-again" }}]\n',
    )


def run_fuzz(harness: str, module: str, allowed: str, config: str, seed: int, calls: int,
             timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([harness, module, allowed, str(seed), str(calls)],
                          env=dict(os.environ, PKCS11_KMS_CONFIG=config, **env),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """What went wrong, with the harness's own lines (a crash and a hang name the call and seed)."""
    if proc.returncode < 0:
        what = f"crash: {signal.Signals(-proc.returncode).name}"
    elif proc.returncode == 4:
        what = "hang"
    else:
        what = f"exit {proc.returncode}"
    harness_lines = [line for line in proc.stderr.splitlines() if line.startswith("fuzz:")]
    violations = [line for line in proc.stdout.splitlines() if line.startswith("violation")]
    return "\n".join([what, *harness_lines, *violations[:20]])


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    m = SUMMARY.search(proc.stdout)
    assert m, describe(proc)
    fields = m.groupdict()
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in ("functions", "ec_point", "signature", "digest"):
            fields[key] = value
    return fields


@dataclass
class Fuzz:
    harness: str
    module: str
    allowed: str
    config: str

    def run(self, seed: int, calls: int, allowed: str | None = None,
            **env: str) -> subprocess.CompletedProcess[str]:
        return run_fuzz(self.harness, self.module, allowed or self.allowed, self.config, seed,
                        calls, timeout=120 + calls / 50, **env)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory, kms_server, seeded, module_path) -> Fuzz:
    tmp = tmp_path_factory.mktemp("fuzz")
    return Fuzz(build_c_host("fuzz", tmp), module_path, write_allowed(tmp / "allowed.txt"),
                fuzz_config(tmp / "config.toml", kms_server, seeded))


@pytest.fixture
def slow_sign(kms_server):
    """Every KMS Sign takes 12 s (under the module's 15 s read timeout): the first canary's
    signature is a slow call."""
    kms_server.set_faults(latency_ms=12000, operations=["Sign"])
    yield
    kms_server.clear_faults()


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz(fuzz, seeded, seed):
    proc = fuzz.run(seed, CALLS)
    assert proc.returncode == 0, describe(proc)
    s = summary(proc)
    assert int(s["seed"]) == seed
    assert int(s["calls"]) >= CALLS
    assert int(s["violations"]) == 0
    assert int(s["canaries"]) >= CALLS // (CANARY_EVERY + 20)  # a canary makes ~10 calls
    assert int(s["canaries_failed"]) == 0
    counts = dict(item.split("=") for item in s["functions"].split())
    assert len(counts) == 92
    assert [name for name, n in counts.items() if int(n) == 0] == []  # every function called
    # The last canary's signature, checked by an independent verifier (r||s over the digest).
    public = serialization.load_der_public_key(seeded["ec-sign"].public_der)
    signature = bytes.fromhex(s["signature"])
    assert len(signature) == 64
    der = utils.encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                     int.from_bytes(signature[32:], "big"))
    public.verify(der, bytes.fromhex(s["digest"]), ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_fuzz_reports_codes_outside_the_allowed_set(fuzz, tmp_path):
    """The harness can fail: with CKR_ARGUMENTS_BAD taken out of every set, it reports violations
    naming the seed and the call, and exits 1."""
    narrowed = tmp_path / "narrowed.txt"
    narrowed.write_text("".join(
        " ".join(tok for tok in line.split() if tok != "0x7") + "\n"
        for line in Path(fuzz.allowed).read_text().splitlines()))
    proc = fuzz.run(3, 1000, str(narrowed))
    assert proc.returncode == 1, describe(proc)
    assert int(summary(proc)["violations"]) > 0
    assert re.search(r"^violation: not in the allowed set rv=0x7 in call #\d+ seed=3 C_\w+\(",
                     proc.stdout, re.M), proc.stdout[-2000:]


def test_fuzz_names_a_hang(fuzz, slow_sign):
    """The watchdog: a call longer than FUZZ_HANG_SECONDS ends the run (exit 4) naming it."""
    proc = fuzz.run(11, 1000, FUZZ_HANG_SECONDS="6")  # more than a cold start under load
    assert proc.returncode == 4, describe(proc)
    assert re.search(r"^fuzz: HANG in C_Sign after [67] s: call #\d+ seed=11 C_Sign\(canary ",
                     proc.stderr, re.M), proc.stderr[-2000:]


def test_fuzz_names_a_crash(fuzz, slow_sign):
    """The crash handler: a SIGSEGV during a call names the call and the seed, and the harness
    dies by the signal. The signal comes from outside, while the canary's C_Sign waits on KMS."""
    proc = subprocess.Popen([fuzz.harness, fuzz.module, fuzz.allowed, "5", "1000", "-v"],
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PKCS11_KMS_CONFIG=fuzz.config))
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    try:
        while True:  # a timeout is a failure (queue.Empty)
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if re.match(r"call #\d+ seed=5 C_Sign\(canary h=\d+\)$", line):
                break
        proc.send_signal(signal.SIGSEGV)
        assert proc.wait(timeout=60) == -signal.SIGSEGV
    finally:
        proc.kill()
        proc.wait(timeout=60)
    reader.join(timeout=60)
    rest = "".join(lines.queue)
    assert re.search(r"^fuzz: CRASH signal 11 (during|after) call #\d+ seed=5 C_Sign\(canary ",
                     rest, re.M), rest[-2000:]
    assert "fuzz: replay with seed 5 up to call #" in rest
