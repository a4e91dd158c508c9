"""The full fuzz run: tests/harness/fuzz.c against the project's emulator, >= 100,000 calls.

Compiles the harness, starts the emulator with an RSA sign key, an EC sign key and an RSA decrypt
key (two tokens, so there are two slots), writes the allowed return codes of every function
(`python -m pkcs11_kms.core.returns`) and runs the harness once per seed. Prints the harness's
summary and one figure line per seed; exits non-zero unless every run had 0 crashes, 0 hangs and
0 violations. A crash or a hang names the seed and the call to replay (`fuzz ... SEED N -v`).

    nice -n 10 .venv/bin/python bench/fuzz.py [CALLS] [SEED ...]     (default: 100000 calls, seed 1)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hosts import build_c_host  # noqa: E402
from keyseed import SEED, seed_key  # noqa: E402
from test_fuzz import (  # noqa: E402
    SUMMARY,
    describe,
    fuzz_config,
    run_fuzz,
    write_allowed,
)

from pkcs11_kms import module_path  # noqa: E402
from pkcs11_kms.emulator.testing import DUMMY_AWS_ENV, EmulatorProcess  # noqa: E402


def seed_keys(kms):
    client = kms.client()
    return {alias: seed_key(client, alias, spec, usage) for alias, spec, usage in SEED}


def main() -> int:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    seeds = [int(s) for s in sys.argv[2:]] or [1]
    total = {"calls": 0, "seconds": 0.0, "crashes": 0, "hangs": 0, "violations": 0, "failed": 0}
    os.environ.update(DUMMY_AWS_ENV)
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess() as kms:
        tmp_path = Path(tmp)
        harness = build_c_host("fuzz", tmp_path)
        allowed = write_allowed(tmp_path / "allowed.txt")
        config = fuzz_config(tmp_path / "config.toml", kms, seed_keys(kms))
        for seed in seeds:
            start = time.monotonic()
            # Generous: the harness's own watchdog reports a hang after 60 s in one call.
            proc = run_fuzz(harness, str(module_path()), allowed, config, seed, calls,
                            timeout=max(600.0, calls / 20))
            wall = time.monotonic() - start
            total["seconds"] += wall
            print(proc.stdout, end="")
            m = SUMMARY.search(proc.stdout)
            if m:
                total["calls"] += int(m["calls"])
                total["violations"] += int(m["violations"])
            total["crashes"] += proc.returncode < 0
            total["hangs"] += proc.returncode == 4
            if proc.returncode == 0 and m:
                print(f"FIGURE seed={seed} calls={m['calls']} seconds={wall:.0f} crashes=0 hangs=0 "
                      f"violations={m['violations']} canaries={m['canaries']} "
                      f"canaries_failed={m['canaries_failed']}")
            else:
                total["failed"] += 1
                print(f"FIGURE seed={seed} seconds={wall:.0f} FAILED: {describe(proc)}")
    print(f"TOTAL seeds={len(seeds)} calls={total['calls']} seconds={total['seconds']:.0f} "
          f"crashes={total['crashes']} hangs={total['hangs']} violations={total['violations']} "
          f"failed_runs={total['failed']}")
    return 1 if total["failed"] else 0

if __name__ == "__main__":
    sys.exit(main())
