"""Benchmark: many C threads signing at once, with our own thread and without (threadless).

Runs the C harness (tests/harness/p11harness.c, `sign-threads`) against the project's emulator
with 20 ms of latency on Sign: 16 threads x 4 signatures, with CKF_OS_LOCKING_OK (the module's
loop thread) and with CKF_LIBRARY_CANT_CREATE_OS_THREADS too (each calling thread drives a loop of
its own), and 1 thread x 64 for reference; alternately, REPEAT times. Warm: each thread has
signed once before the clock starts (threadless: each calling thread's loop has made its KMS
client, ~35 ms of CPU per loop, once per process); cold: the clock starts with the first call.
Prints the medians and the ratios threadless / threaded (1.0: as fast).

    .venv/bin/python bench/threads.py [REPEAT]
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hosts import build_c_host  # noqa: E402
from keyseed import seed_key, write_config  # noqa: E402

from pkcs11_kms import module_path  # noqa: E402
from pkcs11_kms.emulator.testing import DUMMY_AWS_ENV, EmulatorProcess  # noqa: E402

THREADS, CALLS = 16, 4
LATENCY_MS = 20
THREADED, THREADLESS = "2", "3"  # CKF_OS_LOCKING_OK, | CKF_LIBRARY_CANT_CREATE_OS_THREADS


def elapsed_ms(harness: str, env: dict[str, str], flags: str, threads: int, calls: int,
               warm: int = 1) -> int:
    out = subprocess.run([harness, str(module_path()), "sign-threads", flags, str(threads),
                          str(calls), os.devnull, str(warm)], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    total = threads * calls
    m = re.search(rf"sign-threads ok={total} of {total} errors=0 \S+ elapsed_ms=(\d+)", out)
    if not m:
        raise SystemExit(f"harness failed: {out}")
    return int(m.group(1))


def main() -> None:
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess() as kms:
        harness = build_c_host("p11harness", Path(tmp))
        key = seed_key(kms.client(), None, "ECC_NIST_P256", "SIGN_VERIFY")
        config = write_config(Path(tmp) / "config.toml", kms,
                              f'[[token]]\nlabel = "bench"\nkeys = ["{key.arn}"]\n')
        env = {**os.environ, **DUMMY_AWS_ENV, "PKCS11_KMS_CONFIG": config}
        kms.set_faults(latency_ms=LATENCY_MS, operations=["Sign"])
        runs: dict[str, list[int]] = {}
        for _ in range(repeat):
            runs.setdefault("1 thread", []).append(
                elapsed_ms(harness, env, THREADED, 1, THREADS * CALLS))
            for warm in (1, 0):
                for name, flags in (("threaded", THREADED), ("threadless", THREADLESS)):
                    runs.setdefault(f"{name}, {'warm' if warm else 'cold'}", []).append(
                        elapsed_ms(harness, env, flags, THREADS, CALLS, warm))
        overlap = kms.faults()["stats"]["max_in_flight"]
    median = {name: statistics.median(times) for name, times in runs.items()}
    print(f"{THREADS * CALLS} signatures, {LATENCY_MS} ms latency per Sign, median of {repeat}:")
    for name, ms in median.items():
        label = name if name == "1 thread" else f"{THREADS} threads, {name}"
        print(f"  {label:29}: {ms:5.0f} ms")
    for state in ("warm", "cold"):
        ratio = median[f"threadless, {state}"] / median[f"threaded, {state}"]
        print(f"  threadless / threaded, {state}: {ratio:.2f}")
    print(f"  most requests at KMS at once: {overlap}")


if __name__ == "__main__":
    main()
