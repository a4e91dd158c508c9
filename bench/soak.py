"""Soak: 100,000 signatures in one C host process, watching its memory, descriptors and threads.

Runs the C harness (tests/harness/p11harness.c, `soak`) against the project's emulator: THREADS
threads sign with CKM_ECDSA on a P-256 key until TOTAL signatures are made; every EVERY signatures
the harness samples its own VmRSS (/proc/self/status), open descriptors (/proc/self/fd) and thread
count. Prints a table and the summary (RSS growth from the 10,000th signature to the end, the most
descriptors, the most threads), writes them as JSON, and checks the signatures the harness wrote
(one every EVERY) with `cryptography`. The emulator signs a few hundred per second: 100,000 take
minutes.

    nice -n 10 .venv/bin/python bench/soak.py [--total 100000] [--threads 4] [--every 5000]
        [--https] [--json soak.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, utils  # noqa: E402
from cryptography.hazmat.primitives.serialization import load_der_public_key  # noqa: E402
from hosts import build_c_host  # noqa: E402
from keyseed import seed_key, write_config  # noqa: E402

from pkcs11_kms import module_path  # noqa: E402
from pkcs11_kms.emulator.testing import DUMMY_AWS_ENV, EmulatorProcess  # noqa: E402
from pkcs11_kms.emulator.tls import make_test_pki  # noqa: E402

SAMPLE = re.compile(r"^sample done=(\d+) signed=(\d+) rss_kb=(-?\d+) fds=(-?\d+) threads=(-?\d+) "
                    r"elapsed_ms=(\d+)$")
BASELINE = 10_000  # RSS growth is measured from this signature on (after warm-up)


def digest(n: int) -> bytes:
    """What the harness signs for number n (soak_digest in p11harness.c)."""
    return bytes((n * 31 + j) & 0xFF for j in range(32))


def verify(public_der: bytes, signature: bytes, n: int) -> bool:
    key = load_der_public_key(public_der)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    try:
        key.verify(utils.encode_dss_signature(r, s), digest(n),
                   ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except Exception:
        return False
    return len(signature) == 64


def run_harness(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, list[str]]:
    """Runs the harness, echoing its sample lines as they come; kills it at the deadline."""
    lines: list[str] = []
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    errors: list[str] = []
    drain = threading.Thread(target=lambda: errors.extend(proc.stderr or ()), daemon=True)
    drain.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith(("sample", "soak", "sign rv", "worker")):
                print("  " + line.rstrip("\n"), flush=True)
        rc = proc.wait()
    finally:
        killer.cancel()
    drain.join(10)
    if rc != 0 or errors:
        print("harness stderr (tail):\n" + "".join(errors[-20:]), file=sys.stderr)
    return rc, lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--total", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--every", type=int, default=5_000)
    ap.add_argument("--https", action="store_true", help="the emulator over HTTPS")
    ap.add_argument("--json", default="soak.json", help="where to write the figures")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        harness = build_c_host("p11harness", tmpdir)
        tls = {}
        if args.https:
            ca, cert, key = make_test_pki(tmpdir)
            tls = {"tls_cert": str(cert), "tls_key": str(key), "ca_bundle": str(ca)}
        with EmulatorProcess(**tls) as kms:
            seeded = seed_key(kms.client(), None, "ECC_NIST_P256", "SIGN_VERIFY")
            config = write_config(tmpdir / "config.toml", kms,
                                  f'[[token]]\nlabel = "soak"\nkeys = ["{seeded.arn}"]\n')
            env = {**os.environ, **DUMMY_AWS_ENV, "PKCS11_KMS_CONFIG": config}
            sigs = tmpdir / "sigs"
            sigs.mkdir()
            timeout = max(600.0, args.total / 50)  # 50 signatures a second at the very least
            started = time.monotonic()
            rc, lines = run_harness(
                [harness, str(module_path()), "soak", str(args.threads), str(args.total),
                 str(args.every), str(sigs)], env, timeout)
            wall = time.monotonic() - started

        samples = [dict(zip(("done", "signed", "rss_kb", "fds", "threads", "elapsed_ms"),
                            map(int, m.groups())))
                   for m in map(SAMPLE.match, lines) if m]
        summary_line = next((x for x in lines if x.startswith("soak ")), "")
        m = re.match(r"soak signed=(\d+) failed=(\d+) elapsed_ms=(\d+)", summary_line)
        signed, failed = (int(m.group(1)), int(m.group(2))) if m else (0, -1)
        files = sorted(sigs.glob("soak-*.sig"))
        bad = [f.name for f in files
               if not verify(seeded.public_der, f.read_bytes(), int(f.stem.split("-")[1]))]

    base = next((s for s in samples if s["done"] >= BASELINE), None)
    last = samples[-1] if samples else None
    report = {
        "total": args.total, "threads": args.threads, "https": args.https,
        "exit_status": rc, "signed": signed, "failed": failed, "wall_s": round(wall, 1),
        "signatures_per_s": round(signed / wall, 1) if wall else 0,
        "rss_kb_at_10000": base["rss_kb"] if base else None,
        "rss_kb_at_end": last["rss_kb"] if last else None,
        "rss_growth_kb_from_10000": (last["rss_kb"] - base["rss_kb"]) if base and last else None,
        "max_fds": max((s["fds"] for s in samples), default=None),
        "max_threads": max((s["threads"] for s in samples), default=None),
        "signatures_checked": len(files), "signatures_bad": bad,
        "samples": samples,
    }
    print(f"\n{'signed':>8} {'rss_kb':>8} {'fds':>5} {'threads':>7} {'elapsed_s':>9}")
    for s in samples:
        print(f"{s['done']:>8} {s['rss_kb']:>8} {s['fds']:>5} {s['threads']:>7} "
              f"{s['elapsed_ms'] / 1000:>9.1f}")
    print(f"\nexit={rc} signed={signed} failed={failed} wall={wall:.0f}s "
          f"({report['signatures_per_s']}/s)")
    print(f"RSS {report['rss_kb_at_10000']} kB at {BASELINE} -> {report['rss_kb_at_end']} kB at "
          f"the end: growth {report['rss_growth_kb_from_10000']} kB")
    print(f"max descriptors {report['max_fds']}, max threads {report['max_threads']}")
    print(f"signatures checked by cryptography: {len(files)}, bad: {len(bad)}")
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    ok = rc == 0 and failed == 0 and signed == args.total and files and not bad
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
