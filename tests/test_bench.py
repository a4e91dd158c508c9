"""The benchmark command of issue #12 runs (bench/run.py --quick) and reports every figure with its
target (docs/performance.md). No timed assertions: the figures must exist and be positive numbers;
whether a target is met is the benchmark's report, never a test result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Every figure of docs/performance.md, and whether it has a target in issue #12.
TARGETED = [
    *(f"overhead.{where}.{kind}.ratio" for where in ("loopback", "latency")
      for kind in ("ec", "rsa")),
    *(f"concurrency.{mode}.32.percent_of_ideal" for mode in ("threaded", "threadless")),
    *(f"concurrency.{mode}.64.per_s" for mode in ("threaded", "threadless")),
    "cold.kms.L.wall_ms", "cold.kms.O.wall_ms",
    "cold.kms.engine.wall_ms", "cold.kms.engine.rss_over_plain_mb",
    "cold.kms.provider.wall_ms", "cold.kms.provider.rss_over_plain_mb",
    "listing.first_s",
]
REFERENCE = [
    *(f"overhead.{where}.{kind}.{side}_ms" for where in ("loopback", "latency")
      for kind in ("ec", "rsa") for side in ("module", "direct")),
    *(f"concurrency.{mode}.{n}.percent_of_ideal" for mode in ("threaded", "threadless")
      for n in (1, 8, 64)),
    "ceiling.emulator.per_s", "ceiling.proxy.per_s",
    *(f"cold.softhsm.{c}.{m}" for c in ("L", "O", "engine", "provider")
      for m in ("wall_ms", "rss_mb")),
    "cold.kms.L.rss_mb", "cold.kms.O.rss_mb", "cold.kms.O_uncached.wall_ms",
    "cold.kms.O_uncached.rss_mb", "cold.plain.wall_ms", "cold.plain.rss_mb",
    "cpu.threaded.ms_per_signature", "cpu.threadless.ms_per_signature",
    "listing.initialize_s",
]


def test_benchmark_quick(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json",
                           str(out)], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    figures = {f["key"]: f for f in report["figures"]}
    assert set(TARGETED) | set(REFERENCE) <= set(figures), \
        sorted(set(TARGETED) | set(REFERENCE) - set(figures))
    for key, f in figures.items():
        assert isinstance(f["value"], (int, float)) and f["value"] > 0, (key, f)
        assert f["runs"] and all(isinstance(r, (int, float)) for r in f["runs"]), (key, f)
        assert "target" in f and "met" in f, (key, f)
        printed = [line for line in proc.stdout.splitlines() if line.startswith(f["name"])]
        assert printed, f"{key}: not in the table"
        if f["target"] is not None:
            assert isinstance(f["met"], bool), (key, f)
            assert f["target"] in printed[0], (key, printed[0])
    for key in TARGETED:
        assert figures[key]["target"], f"{key} has no target"
    assert report["meta"]["quick"] is True and report["meta"]["repeat"] >= 2
