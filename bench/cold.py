"""Cold starts: `pkcs11-tool -O` run RUNS times over HTTPS, each a fresh process; no crash allowed.

Each run starts Python inside pkcs11-tool, lists the token's objects (the first KMS calls, over TLS
to the project's emulator) and exits. The emulator is restarted every RESTART runs (a fresh HTTPS
server: glibc "double free" aborts were once seen right after one started). Counts exit statuses,
signals, timeouts, runs whose listing misses a key, and stderr lines mentioning "double free",
"corrupted" or "Segmentation"; prints them with the median wall time. A run killed by a signal
leaves its stderr and any core file (RLIMIT_CORE is raised; kernel.core_pattern decides where) in
the directory named in the report.

    nice -n 10 .venv/bin/python bench/cold.py [--runs 1000] [--restart 50] [--json cold.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from keyseed import seed_key, write_config  # noqa: E402

from pkcs11_kms import module_path  # noqa: E402
from pkcs11_kms.emulator.testing import DUMMY_AWS_ENV, EmulatorProcess  # noqa: E402
from pkcs11_kms.emulator.tls import make_test_pki  # noqa: E402

KEYS = [("ECC_NIST_P256", "SIGN_VERIFY", "ec"), ("RSA_2048", "SIGN_VERIFY", "rsa"),
        ("RSA_3072", "ENCRYPT_DECRYPT", "decrypt")]
CRASH_WORDS = re.compile(r"double free|corrupted|Segmentation", re.I)
TIMEOUT = 60.0


def with_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def start_emulator(pki: tuple[Path, Path, Path], tmp: Path, generation: int
                   ) -> tuple[EmulatorProcess, dict[str, str]]:
    ca, cert, key = pki
    kms = EmulatorProcess(tls_cert=str(cert), tls_key=str(key), ca_bundle=str(ca)).start()
    client = kms.client()
    refs = ", ".join(f'{{ key = "{seed_key(client, None, spec, usage).arn}", label = "{label}" }}'
                     for spec, usage, label in KEYS)
    config = write_config(tmp / f"config-{generation}.toml", kms,
                          f'[[token]]\nlabel = "cold"\nkeys = [{refs}]\n')
    return kms, {**os.environ, **DUMMY_AWS_ENV, "PKCS11_KMS_CONFIG": config}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--restart", type=int, default=50, help="restart the emulator every N runs")
    ap.add_argument("--json", default="cold.json", help="where to write the figures")
    ap.add_argument("--keep", default=None, help="directory for failed and crashed runs' output and cores")
    args = ap.parse_args()
    tool = shutil.which("pkcs11-tool")
    if tool is None:
        print("pkcs11-tool is not installed (Debian: apt-get install opensc)", file=sys.stderr)
        return 2
    keep = Path(args.keep or tempfile.mkdtemp(prefix="cold-crashes-"))
    keep.mkdir(parents=True, exist_ok=True)
    exits: collections.Counter[str] = collections.Counter()
    crash_lines: list[str] = []
    missing = timeouts = 0
    walls: list[float] = []
    crashes: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        pki = make_test_pki(tmpdir)
        kms: EmulatorProcess | None = None
        try:
            for i in range(args.runs):
                if i % args.restart == 0:
                    if kms is not None:
                        kms.stop()
                    kms, env = start_emulator(pki, tmpdir, i // args.restart)
                rundir = tmpdir / "run"
                rundir.mkdir(exist_ok=True)
                cmd = [tool, "--module", str(module_path()), "-O"]
                t0 = time.monotonic()
                try:
                    proc = subprocess.run(cmd, env=env, cwd=rundir, capture_output=True, text=True,
                                          timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                                          preexec_fn=with_core_dumps)
                except subprocess.TimeoutExpired:
                    timeouts += 1
                    exits["timeout"] += 1
                    continue
                walls.append(time.monotonic() - t0)
                rc = proc.returncode
                if rc < 0:
                    name = signal.Signals(-rc).name
                    exits[name] += 1
                    saved = keep / f"run-{i}"
                    saved.mkdir(exist_ok=True)
                    (saved / "stderr.txt").write_text(proc.stderr)
                    (saved / "stdout.txt").write_text(proc.stdout)
                    for core in rundir.glob("core*"):
                        core.rename(saved / core.name)
                    crashes.append({"run": i, "signal": name, "since_restart": i % args.restart,
                                    "saved": str(saved)})
                    print(f"run {i}: {name} ({i % args.restart} runs after an emulator start), "
                          f"saved in {saved}", flush=True)
                else:
                    exits[f"exit {rc}"] += 1
                    if rc != 0:  # kept too: a failure is not a crash, but must be explained
                        saved = keep / f"run-{i}"
                        saved.mkdir(exist_ok=True)
                        (saved / "stderr.txt").write_text(proc.stderr)
                        (saved / "stdout.txt").write_text(proc.stdout)
                        print(f"run {i}: exit {rc}, stderr kept in {saved}", flush=True)
                crash_lines += [f"run {i}: {x}" for x in proc.stderr.splitlines()
                                if CRASH_WORDS.search(x)]
                if rc == 0 and proc.stdout.count("Private Key Object") < 3:
                    missing += 1
                if (i + 1) % 100 == 0:
                    print(f"{i + 1} runs: {dict(exits)}, median "
                          f"{statistics.median(walls) * 1000:.0f} ms", flush=True)
        finally:
            if kms is not None:
                kms.stop()
    report = {
        "runs": args.runs, "restart_every": args.restart, "exits": dict(exits),
        "signals": sum(n for k, n in exits.items() if k.startswith("SIG")),
        "timeouts": timeouts, "listings_missing_a_key": missing,
        "crash_lines": crash_lines[:50], "crashes": crashes,
        "median_wall_ms": round(statistics.median(walls) * 1000) if walls else None,
        "max_wall_ms": round(max(walls) * 1000) if walls else None,
    }
    print(f"\nruns={args.runs} exits={dict(exits)} timeouts={timeouts} "
          f"signals={report['signals']} listings missing a key={missing}")
    print(f"stderr crash lines: {len(crash_lines)}" + "".join(f"\n  {x}" for x in crash_lines[:10]))
    print(f"median wall {report['median_wall_ms']} ms, max {report['max_wall_ms']} ms")
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    ok = exits.get("exit 0", 0) == args.runs and not crash_lines and not missing
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
