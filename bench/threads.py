"""Benchmark: KMS calls from 8 C threads at once against one thread, with injected KMS latency.

Runs the C harness (tests/harness/p11harness.c) against the project's emulator with 50 ms of
latency on GenerateRandom; the same 32 calls are made by 1 thread and by 8 threads, alternately,
REPEAT times. Prints the medians and their ratio (DESIGN 3 measured 8x for 8 threads).

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

from keyseed import seed_key, write_config  # noqa: E402

from pkcs11_kms import module_path  # noqa: E402
from pkcs11_kms.emulator.testing import DUMMY_AWS_ENV, EmulatorProcess  # noqa: E402

CALLS = 32
LATENCY_MS = 50


def elapsed_ms(harness: str, env: dict[str, str], threads: int) -> int:
    out = subprocess.run([harness, str(module_path()), "threads", str(threads), str(CALLS // threads)],
                         env=env, capture_output=True, text=True, timeout=300, check=True).stdout
    m = re.search(rf"calls_ok={CALLS} of {CALLS} elapsed_ms=(\d+)", out)
    if not m:
        raise SystemExit(f"harness failed: {out}")
    return int(m.group(1))


def main() -> None:
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess() as kms:
        harness = str(Path(tmp) / "p11harness")
        subprocess.run(["cc", "-O2", "-o", harness, str(ROOT / "tests/harness/p11harness.c"),
                        "-ldl", "-lpthread"], check=True)
        seed_key(kms.client(), "bench", "ECC_NIST_P256", "SIGN_VERIFY")
        config = write_config(Path(tmp) / "config.toml", kms,
                              '[[token]]\nlabel = "bench"\nkeys = ["alias/bench"]\n')
        env = {**os.environ, **DUMMY_AWS_ENV, "PKCS11_KMS_CONFIG": config}
        kms.set_faults(latency_ms=LATENCY_MS, operations=["GenerateRandom"])
        one, eight = [], []
        for _ in range(repeat):
            one.append(elapsed_ms(harness, env, 1))
            eight.append(elapsed_ms(harness, env, 8))
    m1, m8 = statistics.median(one), statistics.median(eight)
    print(f"{CALLS} KMS calls, {LATENCY_MS} ms latency, median of {repeat}:")
    print(f"  1 thread : {m1:.0f} ms")
    print(f"  8 threads: {m8:.0f} ms")
    print(f"  speed-up : {m1 / m8:.1f}x")


if __name__ == "__main__":
    main()
