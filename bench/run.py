"""The benchmark of issue #12: every figure of docs/performance.md next to its target.

    nice -n 10 .venv/bin/python bench/run.py [--quick] [--repeat N] [--json bench.json]

Starts its own KMS emulators on 127.0.0.1 (plain HTTP, and HTTPS for the cold starts), a
latency-injecting proxy of ours (bench/kmsproxy.py) and a C host (bench/p11bench.c, compiled on
the way), and measures:

1. per-operation overhead: one C thread signing through the module against a direct, warm,
   persistent aiobotocore client signing the same key at the same endpoint (RSA-2048, P-256), on
   loopback (the emulator itself) and at 20 ms (the proxy); ratio module / direct;
2. concurrency: signatures/s at 1, 8, 32 and 64 threads of one C host process, in both threading
   modes, through the proxy (20 ms per request; it answers Sign itself from the emulator's key
   material, so the emulator's ceiling is out of the way), against ideal = threads / 20 ms; and the
   ceilings of the emulator and of the proxy (no latency, 64 connections, requests replayed raw);
3. cold start: wall time and peak RSS of `pkcs11-tool -L`, `pkcs11-tool -O`, one `openssl
   pkeyutl -sign` through libp11's engine and one through pkcs11-provider, the same with SoftHSM2,
   and plain openssl;
4. CPU per signature at the best thread count (user + sys of the C host / signatures), and the
   first listing of the default config (no config file: every key of the region) with 1,000 keys
   at 20 ms per request.

Every figure is the median of REPEAT runs (default 7; --quick: 2 runs of small sizes, for smoke
tests only); comparisons are ratios of figures measured in the same run, interleaved. Prints a
table (figure, measured, target, met) and writes all figures and their runs as JSON. Exits 0 when
every figure was measured (met or not), 1 when a measurement failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from keyseed import seed_key, write_config  # noqa: E402

from pkcs11_kms import module_path  # noqa: E402
from pkcs11_kms.emulator.testing import DUMMY_AWS_ENV, EmulatorProcess  # noqa: E402
from pkcs11_kms.emulator.tls import make_test_pki  # noqa: E402

PY = sys.executable
LATENCY_MS = 20
THREAD_COUNTS = (1, 8, 32, 64)
# C_Initialize flags: CKF_OS_LOCKING_OK; | CKF_LIBRARY_CANT_CREATE_OS_THREADS (as NSS, GnuTLS)
MODES = {"threaded": "2", "threadless": "3"}
ALGORITHMS = {"rsa": "RSASSA_PKCS1_V1_5_SHA_256", "ec": "ECDSA_SHA_256"}
KEY_NAMES = {"rsa": "RSA-2048", "ec": "P-256"}
SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")
ENGINE = Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so")
PROVIDER = Path("/usr/lib/x86_64-linux-gnu/ossl-modules/pkcs11.so")
LISTING_REGION = "us-west-2"  # the 1,000 keys, alone in their region
SOFT_PIN = "1234"
TIME = "/usr/bin/time"  # GNU time (Debian package time)


# ---- figures ------------------------------------------------------------------------------------

class Figures:
    """The figures, in order: each a median of its runs, with its target (or none)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, key: str, section: str, name: str, runs: list[float], unit: str,
            target: tuple[str, float] | None = None, shown: str | None = None,
            note: str = "") -> dict[str, Any]:
        value = statistics.median(runs)
        met = None
        if target is not None:
            op, bound = target
            met = value <= bound if op == "<=" else value >= bound
        item = {"key": key, "section": section, "name": name, "value": round(value, 4),
                "unit": unit, "runs": [round(r, 4) for r in runs],
                "target": f"{target[0]} {fmt(target[1], unit)}" if target else None,
                "met": met, "shown": shown, "note": note}
        self.items.append(item)
        return item


def fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "%":
        return f"{value:.0f}%"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "x":
        return f"{value:.2f}"
    return f"{value:g} {unit}"


def print_table(figures: Figures, header: str) -> None:
    print("\n" + header)
    section = None
    width = max(len(f["name"]) for f in figures.items) + 2
    print(f"{'figure':<{width}}{'measured':>26}  {'target':<18}met")
    for f in figures.items:
        if f["section"] != section:
            section = f["section"]
            print(f"-- {section}")
        shown = f["shown"] or fmt(f["value"], f["unit"])
        target = f["target"] or "-"
        met = {True: "met", False: "NOT MET", None: ""}[f["met"]]
        print(f"{f['name']:<{width}}{shown:>26}  {target:<18}{met}")


# ---- processes ----------------------------------------------------------------------------------

def build_host(out_dir: Path) -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SystemExit("gcc is not installed")
    out = out_dir / "p11bench"
    subprocess.run([gcc, "-Wall", "-Wextra", "-Werror", "-O1", "-o", str(out),
                    str(BENCH / "p11bench.c"), "-ldl", "-lpthread"], check=True, timeout=120)
    return str(out)


class Proxy:
    """bench/kmsproxy.py in a process of its own."""

    def __init__(self, upstream: str, delay_ms: float, sign_locally: bool) -> None:
        cmd = [PY, str(BENCH / "kmsproxy.py"), "--upstream", upstream, "--delay-ms",
               str(delay_ms)] + (["--sign-locally"] if sign_locally else [])
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                        stdin=subprocess.DEVNULL)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("proxy: "):
            self.stop()
            raise SystemExit(f"the proxy did not start: {line!r}")
        self.url = line.split()[1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def host_sign(host: str, env: dict[str, str], flags: str, threads: int, calls: int, warm: int,
              kind: str) -> dict[str, int]:
    proc = subprocess.run([host, str(module_path()), "sign", flags, str(threads), str(calls),
                           str(warm), kind], env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    m = re.search(r"^sign ok=(\d+) of (\d+) elapsed_us=(\d+) cpu_user_us=(\d+) cpu_sys_us=(\d+) "
                  r"median_us=(\d+) p90_us=(\d+)$", proc.stdout, re.M)
    if proc.returncode != 0 or not m or m.group(1) != m.group(2):
        raise RuntimeError(f"p11bench sign {flags} {threads} {kind} failed "
                           f"(exit {proc.returncode}): {proc.stdout}{proc.stderr[-2000:]}")
    names = ("ok", "total", "elapsed_us", "cpu_user_us", "cpu_sys_us", "median_us", "p90_us")
    return dict(zip(names, map(int, m.groups())))


def direct(*args: object) -> dict[str, float]:
    proc = subprocess.run([PY, str(BENCH / "direct.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **DUMMY_AWS_ENV})
    if proc.returncode != 0:
        raise RuntimeError(f"direct.py {args[0]} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def timed_child(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one process, which must exit 0. The RSS is GNU time's
    %M (the ru_maxrss of a child forked by the small `time` process: a child forked by this
    Python would count this process's pages until its exec)."""
    with tempfile.TemporaryDirectory() as d:
        report = Path(d) / "time"
        t0 = time.monotonic()
        proc = subprocess.run([TIME, "-f", "%M", "-o", str(report), *cmd], env=env, cwd=cwd,
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: "
                               f"{proc.stderr.decode(errors='replace')[-2000:]}")
        return wall, int(report.read_text().split()[-1]) / 1024


# ---- 1. per-operation overhead ------------------------------------------------------------------

def overhead(fig: Figures, host: str,
             setups: dict[tuple[str, str], tuple[str, dict[str, str]]],
             keys: dict[str, Any], repeat: int, calls: int) -> None:
    """setups: (slug, where) -> (endpoint for the direct client, the module's environment)."""
    warm = 10
    for (slug, where), (endpoint, env) in setups.items():
        for kind in ("ec", "rsa"):
            module_ms, direct_ms, ratios = [], [], []
            for _ in range(repeat):  # interleaved: both see the same machine
                m = host_sign(host, env, MODES["threaded"], 1, calls, warm, kind)["median_us"]
                d = direct("latency", endpoint, keys[kind].key_id, ALGORITHMS[kind], calls,
                           warm)["median_us"]
                module_ms.append(m / 1000)
                direct_ms.append(d / 1000)
                ratios.append(m / d)
            section = "1. Per-operation overhead: one thread, module (C host) vs direct aiobotocore"
            name = f"{KEY_NAMES[kind]} sign, {where}"
            fig.add(f"overhead.{slug}.{kind}.module_ms", section,
                    f"{name}: module", module_ms, "ms")
            fig.add(f"overhead.{slug}.{kind}.direct_ms", section,
                    f"{name}: direct", direct_ms, "ms")
            fig.add(f"overhead.{slug}.{kind}.ratio", section,
                    f"{name}: module / direct", ratios, "x", ("<=", 1.10))


# ---- 2. concurrency and 4a. CPU per signature ---------------------------------------------------

def concurrency(fig: Figures, host: str, env: dict[str, str], repeat: int, seconds: float,
                emulator_url: str, stand_in_url: str, key_id: str, ceiling_s: float) -> None:
    section = f"2. Concurrency: one C host process, {LATENCY_MS} ms per KMS request"
    runs: dict[tuple[str, int], list[dict[str, int]]] = {}
    for _ in range(repeat):
        for threads in THREAD_COUNTS:
            # each thread signs for about `seconds` at the ideal pace; at least 5 calls
            calls = max(5, int(seconds * 1000 / LATENCY_MS))
            for mode, flags in MODES.items():
                runs.setdefault((mode, threads), []).append(
                    host_sign(host, env, flags, threads, calls, 2, "ec"))
    for mode in MODES:
        for threads in THREAD_COUNTS:
            rs = runs[(mode, threads)]
            rates = [r["ok"] / (r["elapsed_us"] / 1e6) for r in rs]
            ideal = threads * 1000 / LATENCY_MS
            rate = statistics.median(rates)
            shown = f"{rate:,.0f}/s = {rate / ideal:.0%} of {ideal:,.0f}"
            target = None
            if threads == 32:
                target = (">=", 90.0)
            fig.add(f"concurrency.{mode}.{threads}.percent_of_ideal", section,
                    f"{mode}, {threads} thread{'s' if threads > 1 else ''}: % of ideal",
                    [x / ideal * 100 for x in rates], "%", target, shown=shown)
            if threads == 64:
                fig.add(f"concurrency.{mode}.64.per_s", section,
                        f"{mode}, 64 threads: signatures/s", rates, "/s", (">=", 1000.0))
    emulator, stand_in = [], []
    for _ in range(max(1, repeat // 2)):
        emulator.append(direct("ceiling", emulator_url, key_id, ALGORITHMS["ec"], 64,
                               ceiling_s)["per_s"])
        stand_in.append(direct("ceiling", stand_in_url, key_id, ALGORITHMS["ec"], 64,
                               ceiling_s)["per_s"])
    fig.add("ceiling.emulator.per_s", section, "ceiling: the emulator's Sign (no latency)",
            emulator, "/s", note="64 connections, a botocore-made request replayed raw")
    fig.add("ceiling.proxy.per_s", section, "ceiling: the proxy's Sign (no latency)",
            stand_in, "/s", note="the proxy answering Sign, as used for the figures above")

    section4 = "4. CPU and the default config's first listing"
    for mode in MODES:
        best = max(THREAD_COUNTS, key=lambda t: statistics.median(
            r["ok"] / r["elapsed_us"] for r in runs[(mode, t)]))
        cpu = [(r["cpu_user_us"] + r["cpu_sys_us"]) / r["ok"] / 1000 for r in runs[(mode, best)]]
        fig.add(f"cpu.{mode}.ms_per_signature", section4,
                f"CPU per signature, {mode} ({best} threads)", cpu, "ms",
                note="user + sys of the C host process over the timed signatures")


# ---- 3. cold start ------------------------------------------------------------------------------

def installed_module(tmp: Path) -> str:
    """The module as `pip install` makes it, which the cold starts run: its bytecode compiled, no
    editable install's import hook. A throwaway virtual environment whose dependencies are this
    one's (a .pth file naming its site-packages), the project built and installed into it."""
    import site

    venv = tmp / "installed"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path("
                              "'purelib'))"], check=True, capture_output=True, text=True,
                             timeout=60).stdout.strip()
    Path(purelib, "bench-dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    proc = subprocess.run([PY, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
                           "--no-build-isolation", str(ROOT)], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install of the project failed: {proc.stderr[-3000:]}")
    return str(Path(purelib) / "pkcs11_kms" / "libkms-pkcs11.so")


def softhsm_token(tmp: Path) -> dict[str, str]:
    """A SoftHSM2 token `soft` with an EC P-256 key `ec`, in TMP; its environment."""
    util, tool = shutil.which("softhsm2-util"), shutil.which("pkcs11-tool")
    if util is None or not SOFTHSM.is_file():
        raise SystemExit("SoftHSM2 is not installed (Debian: apt-get install softhsm2)")
    (tmp / "tokens").mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run([util, "--init-token", "--free", "--label", "soft", "--pin", SOFT_PIN,
                    "--so-pin", "5678"], env=env, check=True, capture_output=True, timeout=60)
    subprocess.run([tool, "--module", str(SOFTHSM), "--token-label", "soft", "--login", "--pin",
                    SOFT_PIN, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "ec",
                    "--id", "01"], env=env, check=True, capture_output=True, timeout=60)
    return env


def openssl_confs(tmp: Path, module: str, name: str, pin: str, quirk: str = ""
                  ) -> tuple[Path, Path]:
    """(libp11 engine config, pkcs11-provider config) for MODULE, from the files we ship."""
    engine = (ROOT / "conf" / "openssl-engine.cnf").read_text()
    engine = re.sub(r"^MODULE_PATH = .*$", f"MODULE_PATH = {module}", engine, flags=re.M)
    provider = (ROOT / "conf" / "openssl-provider.cnf").read_text()
    provider = re.sub(r"^pkcs11-module-path = .*$", f"pkcs11-module-path = {module}", provider,
                      flags=re.M)
    provider = re.sub(r"^pkcs11-module-token-pin = .*$", f"pkcs11-module-token-pin = {pin}",
                      provider, flags=re.M)
    if quirk:
        provider = provider.replace("\npkcs11-module-token-pin",
                                    f"\n{quirk}\npkcs11-module-token-pin")
    (tmp / f"engine-{name}.cnf").write_text(engine)
    (tmp / f"provider-{name}.cnf").write_text(provider)
    return tmp / f"engine-{name}.cnf", tmp / f"provider-{name}.cnf"


def cold_start(fig: Figures, tmp: Path, repeat: int) -> None:
    section = "3. Cold start: one process each (wall time, peak RSS)"
    tool = shutil.which("pkcs11-tool")
    openssl = shutil.which("openssl")
    for what, path in (("pkcs11-tool (opensc)", tool), ("openssl", openssl),
                       ("libp11's engine (libengine-pkcs11-openssl)", ENGINE.is_file()),
                       ("pkcs11-provider", PROVIDER.is_file())):
        if not path:
            raise SystemExit(f"{what} is not installed")
    assert tool and openssl
    work = tmp / "cold"
    work.mkdir()
    ca, cert, key = make_test_pki(work)
    digest = work / "digest"
    digest.write_bytes(bytes(range(32)))
    local = work / "local.pem"
    subprocess.run([openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", str(local)], check=True, capture_output=True)
    soft_env = softhsm_token(work)
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENSSL_CONF", "PKCS11_KMS_CONFIG", "OPENSSL_ENGINES")}
    with EmulatorProcess(tls_cert=str(cert), tls_key=str(key), ca_bundle=str(ca)) as kms:
        client = kms.client()
        ec, rsa = (seed_key(client, None, spec, "SIGN_VERIFY") for spec in ("ECC_NIST_P256",
                                                                            "RSA_2048"))
        token = (f'[[token]]\nlabel = "cold"\nkeys = [{{ key = "{ec.arn}", label = "ec" }}, '
                 f'{{ key = "{rsa.arn}", label = "rsa" }}]\n')
        config = write_config(work / "config.toml", kms, token)  # the key cache on: the default
        uncached = write_config(work / "uncached.toml", kms, "key_cache = false\n" + token)
        kms_env = {**base, **DUMMY_AWS_ENV, "PKCS11_KMS_CONFIG": config,
                   "XDG_CACHE_HOME": str(work / "cache")}
        module = installed_module(work)
        k_engine, k_provider = openssl_confs(work, module, "kms", "kms")
        # SoftHSM2 2.6 dies by SIGSEGV in C_Finalize after OpenSSL's cleanup when
        # pkcs11-provider finalizes it at exit (the signature is written): the provider's
        # no-deinit quirk skips that call.
        s_engine, s_provider = openssl_confs(work, str(SOFTHSM), "soft", SOFT_PIN,
                                             "pkcs11-module-quirks = no-deinit")
        soft = {**base, "SOFTHSM2_CONF": soft_env["SOFTHSM2_CONF"]}
        kms_uri = "pkcs11:token=cold;object=ec;type=private"
        soft_uri = f"pkcs11:token=soft;object=ec;type=private;pin-value={SOFT_PIN}"
        sign = [openssl, "pkeyutl", "-sign", "-in", str(digest), "-out", str(work / "sig")]
        cases: dict[str, tuple[list[str], dict[str, str]]] = {
            "kms.L": ([tool, "--module", module, "-L"], kms_env),
            "kms.O": ([tool, "--module", module, "-O"], kms_env),  # warm: the untimed round
            "kms.O_uncached": ([tool, "--module", module, "-O"],
                               {**kms_env, "PKCS11_KMS_CONFIG": uncached}),
            "kms.engine": (sign + ["-engine", "pkcs11", "-keyform", "engine", "-inkey", kms_uri],
                           {**kms_env, "OPENSSL_CONF": str(k_engine)}),
            "kms.provider": (sign + ["-inkey", kms_uri],
                             {**kms_env, "OPENSSL_CONF": str(k_provider)}),
            "soft.L": ([tool, "--module", str(SOFTHSM), "-L"], soft),
            "soft.O": ([tool, "--module", str(SOFTHSM), "-O"], soft),
            "soft.engine": (sign + ["-engine", "pkcs11", "-keyform", "engine", "-inkey",
                                    soft_uri], {**soft, "OPENSSL_CONF": str(s_engine)}),
            "soft.provider": (sign + ["-inkey", soft_uri.split(";pin-value")[0]],
                              {**soft, "OPENSSL_CONF": str(s_provider)}),
            "plain": (sign + ["-inkey", str(local)], base),
        }
        for cmd, env in cases.values():  # once untimed: page cache, the emulator's first calls
            timed_child(cmd, env, work)
        walls: dict[str, list[float]] = {k: [] for k in cases}
        rss: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(repeat):
            for name, (cmd, env) in cases.items():
                wall, peak = timed_child(cmd, env, work)
                walls[name].append(wall * 1000)
                rss[name].append(peak)
    plain_rss = statistics.median(rss["plain"])
    rows = (("L", "pkcs11-tool -L", 100.0, None),
            ("O", "pkcs11-tool -O (key cache warm)", 150.0, None),
            ("O_uncached", "pkcs11-tool -O (key_cache = false: the first KMS calls)", None, None),
            ("engine", "openssl pkeyutl -sign, libp11 engine", 250.0, 40.0),
            ("provider", "openssl pkeyutl -sign, pkcs11-provider", 250.0, 40.0))
    for short, label, wall_target, rss_target in rows:
        as_libp11 = " (libp11's target)" if short == "provider" else ""
        fig.add(f"cold.kms.{short}.wall_ms", section, f"{label}: wall", walls[f"kms.{short}"],
                "ms", ("<=", wall_target) if wall_target else None, note=as_libp11)
        rss_runs = rss[f"kms.{short}"]
        if rss_target is None:
            fig.add(f"cold.kms.{short}.rss_mb", section, f"{label}: peak RSS", rss_runs, "MB")
        else:
            fig.add(f"cold.kms.{short}.rss_over_plain_mb", section,
                    f"{label}: peak RSS over plain openssl", [r - plain_rss for r in rss_runs],
                    "MB", ("<=", rss_target),
                    shown=f"+{statistics.median(rss_runs) - plain_rss:.1f} MB "
                          f"({statistics.median(rss_runs):.1f})", note=as_libp11)
        if short == "O_uncached":
            continue  # SoftHSM2 has no cache to go without
        fig.add(f"cold.softhsm.{short}.wall_ms", section, f"  SoftHSM2 {label.split(' (')[0]}: "
                "wall", walls[f"soft.{short}"], "ms")
        fig.add(f"cold.softhsm.{short}.rss_mb", section, f"  SoftHSM2 {label.split(' (')[0]}: "
                "peak RSS", rss[f"soft.{short}"], "MB")
    fig.add("cold.plain.wall_ms", section, "  plain openssl pkeyutl -sign (local key): wall",
            walls["plain"], "ms")
    fig.add("cold.plain.rss_mb", section, "  plain openssl pkeyutl -sign (local key): peak RSS",
            rss["plain"], "MB")


# ---- 4b. the default config's first listing -----------------------------------------------------

def seed_many(kms: EmulatorProcess, count: int) -> None:
    local = threading.local()

    def create(i: int) -> None:
        if not hasattr(local, "client"):
            local.client = kms.client(region=LISTING_REGION)
        local.client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count), timeout=900))


def first_listing(fig: Figures, host: str, tmp: Path, kms: EmulatorProcess, keys: int,
                  repeat: int) -> None:
    section = "4. CPU and the default config's first listing"
    seed_many(kms, keys)
    proxy = Proxy(kms.endpoint_url or "", LATENCY_MS, sign_locally=False)
    try:
        (tmp / "xdg-config").mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "PKCS11_KMS_CONFIG"}
        env.update(DUMMY_AWS_ENV, AWS_REGION=LISTING_REGION, AWS_DEFAULT_REGION=LISTING_REGION,
                   AWS_ENDPOINT_URL_KMS=proxy.url, XDG_CONFIG_HOME=str(tmp / "xdg-config"),
                   XDG_CACHE_HOME=str(tmp / "xdg-cache"))
        listing, init = [], []
        for _ in range(repeat):
            proc = subprocess.run([host, str(module_path()), "list"], env=env, capture_output=True,
                                  text=True, timeout=600, stdin=subprocess.DEVNULL)
            m = re.search(r"^list rv=0x0 init_us=(\d+) listing_us=(\d+) slots=\d+ objects=(\d+)$",
                          proc.stdout, re.M)
            if not m or int(m.group(3)) < 2 * keys:
                raise RuntimeError(f"p11bench list failed: {proc.stdout}{proc.stderr[-2000:]}")
            init.append(int(m.group(1)) / 1e6)
            listing.append(int(m.group(2)) / 1e6)
    finally:
        proxy.stop()
    fig.add("listing.first_s", section,
            f"default config, first listing of {keys:,} keys at {LATENCY_MS} ms", listing, "s",
            ("<=", 2.0), note="C_GetSlotList to the last C_FindObjects: ListKeys, ListAliases, "
            "DescribeKey and GetPublicKey of every key")
    fig.add("listing.initialize_s", section, "  its C_Initialize (starting Python)", init, "s")


# ---- the README's table -------------------------------------------------------------------------

def markdown(report: dict[str, Any]) -> str:
    """The README's summary table of a run's JSON: the targeted figures, SoftHSM2 beside."""
    f = {x["key"]: x for x in report["figures"]}

    def v(key: str) -> str:
        return f[key]["shown"] or fmt(f[key]["value"], f[key]["unit"])

    def met(*keys: str) -> str:
        return "yes" if all(f[k]["met"] for k in keys) else "no"

    def cold(short: str) -> str:
        rss = (f"{f[f'cold.kms.{short}.rss_mb']['value']:.0f} MB" if short[0] in "LO" else
               f"+{f[f'cold.kms.{short}.rss_over_plain_mb']['value']:.0f} MB")
        return f"{v(f'cold.kms.{short}.wall_ms')}, {rss}"

    def soft(short: str) -> str:
        return (f"{v(f'cold.softhsm.{short}.wall_ms')}, "
                f"{f[f'cold.softhsm.{short}.rss_mb']['value']:.0f} MB")

    def pct(mode: str, n: int) -> str:
        return f"{f[f'concurrency.{mode}.{n}.percent_of_ideal']['value']:.0f}%"

    rows = [
        ("Sign overhead, module / direct aiobotocore, P-256 and RSA-2048, emulator on loopback",
         f"{v('overhead.loopback.ec.ratio')} and {v('overhead.loopback.rsa.ratio')}",
         "<= 1.10", met("overhead.loopback.ec.ratio", "overhead.loopback.rsa.ratio")),
        ("the same at 20 ms per request",
         f"{v('overhead.latency.ec.ratio')} and {v('overhead.latency.rsa.ratio')}", "<= 1.10",
         met("overhead.latency.ec.ratio", "overhead.latency.rsa.ratio")),
        ("32 threads at 20 ms, threaded and threadless: % of ideal (1,600/s)",
         f"{pct('threaded', 32)} and {pct('threadless', 32)}", ">= 90%",
         met("concurrency.threaded.32.percent_of_ideal",
             "concurrency.threadless.32.percent_of_ideal")),
        ("64 threads at 20 ms, threaded and threadless",
         f"{v('concurrency.threaded.64.per_s')} and {v('concurrency.threadless.64.per_s')}",
         ">= 1,000/s", met("concurrency.threaded.64.per_s", "concurrency.threadless.64.per_s")),
        ("(ceilings, no latency: the emulator; the proxy that answers Sign)",
         f"{v('ceiling.emulator.per_s')}; {v('ceiling.proxy.per_s')}", "", ""),
        ("CPU per signature at the best thread count, threaded and threadless",
         f"{v('cpu.threaded.ms_per_signature')} and {v('cpu.threadless.ms_per_signature')}", "",
         ""),
        ("`pkcs11-tool -L` (SoftHSM2: " + soft("L") + ")", cold("L"), "<= 100 ms",
         met("cold.kms.L.wall_ms")),
        ("`pkcs11-tool -O`, key cache warm (SoftHSM2: " + soft("O") + ")", cold("O"),
         "<= 150 ms", met("cold.kms.O.wall_ms")),
        ("`pkcs11-tool -O`, `key_cache = false`: the first KMS calls", cold("O_uncached"), "",
         ""),
        ("`openssl pkeyutl -sign`, libp11 (SoftHSM2: " + soft("engine") + "; plain openssl "
         + f"{v('cold.plain.wall_ms')}, {f['cold.plain.rss_mb']['value']:.0f} MB)",
         cold("engine"), "<= 250 ms, <= +40 MB",
         met("cold.kms.engine.wall_ms", "cold.kms.engine.rss_over_plain_mb")),
        ("`openssl pkeyutl -sign`, pkcs11-provider (SoftHSM2: " + soft("provider") + ")",
         cold("provider"), "(libp11's)",
         met("cold.kms.provider.wall_ms", "cold.kms.provider.rss_over_plain_mb")),
        ("Default config, first listing of 1,000 keys at 20 ms", v("listing.first_s"), "< 2 s",
         met("listing.first_s")),
    ]
    lines = ["| Figure | Measured | Target | Met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 runs: a smoke test")
    ap.add_argument("--repeat", type=int, help="runs per figure (default 7; --quick 2)")
    ap.add_argument("--json", default="bench.json", help="where to write the figures")
    ap.add_argument("--only", default="1234", help="sections to run, e.g. 13 (default all)")
    ap.add_argument("--markdown", metavar="JSON",
                    help="print the README's table of a run's JSON, and measure nothing")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    repeat = args.repeat or (2 if args.quick else 7)
    calls = 20 if args.quick else 200  # overhead: timed signatures per run
    seconds = 0.1 if args.quick else 1.2  # concurrency: each thread's share at the ideal pace
    ceiling_s = 1.0 if args.quick else 3.0
    many = 50 if args.quick else 1000
    load_before = os.getloadavg()
    started = time.monotonic()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    fig = Figures()
    with tempfile.TemporaryDirectory(prefix="pkcs11-kms-bench-") as tmp_name:
        tmp = Path(tmp_name)
        host = build_host(tmp)
        with EmulatorProcess() as kms:
            client = kms.client()
            keys = {kind: seed_key(client, None, spec, "SIGN_VERIFY")
                    for kind, spec in (("ec", "ECC_NIST_P256"), ("rsa", "RSA_2048"))}
            stand_in = Proxy(kms.endpoint_url or "", LATENCY_MS, sign_locally=True)
            zero = Proxy(kms.endpoint_url or "", 0, sign_locally=True)
            try:
                body = (f'[[token]]\nlabel = "bench"\n'
                        f'keys = ["{keys["ec"].arn}", "{keys["rsa"].arn}"]\n')
                direct_cfg = write_config(tmp / "emulator.toml", kms, body)
                proxied_cfg = tmp / "proxy.toml"
                proxied_cfg.write_text(Path(direct_cfg).read_text().replace(
                    kms.endpoint_url or "", stand_in.url))
                base = {**os.environ, **DUMMY_AWS_ENV, "XDG_CACHE_HOME": str(tmp / "cache")}
                on_emulator = {**base, "PKCS11_KMS_CONFIG": direct_cfg}
                on_proxy = {**base, "PKCS11_KMS_CONFIG": str(proxied_cfg)}
                if "1" in args.only:
                    overhead(fig, host, {
                        ("loopback", "emulator on loopback"): (kms.endpoint_url or "", on_emulator),
                        ("latency", f"{LATENCY_MS} ms proxy"): (stand_in.url, on_proxy)},
                        keys, repeat, calls)
                if "2" in args.only or "4" in args.only:
                    concurrency(fig, host, on_proxy, repeat, seconds, kms.endpoint_url or "",
                                zero.url, keys["ec"].key_id, ceiling_s)
            finally:
                stand_in.stop()
                zero.stop()
            if "4" in args.only:
                first_listing(fig, host, tmp, kms, many, max(1, repeat // 2 + 1))
        if "3" in args.only:
            cold_start(fig, tmp, repeat)
    # sections in order 1, 2, 3, 4 in the table and the JSON
    fig.items.sort(key=lambda f: f["section"][0])
    load_after = os.getloadavg()
    meta = {
        "date": date,
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(), "quick": args.quick, "repeat": repeat,
        "latency_ms": LATENCY_MS, "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "duration_s": round(time.monotonic() - started, 1),
    }
    header = (f"pkcs11-kms benchmark, {meta['date']}, {os.cpu_count()} cores, load "
              f"{load_before[0]:.2f} -> {load_after[0]:.2f}; medians of {repeat} runs"
              f"{' (--quick: not figures to quote)' if args.quick else ''}")
    print_table(fig, header)
    missed = [f for f in fig.items if f["met"] is False]
    print(f"\n{sum(f['met'] is True for f in fig.items)} targets met, {len(missed)} not met; "
          f"{meta['duration_s']:.0f} s")
    Path(args.json).write_text(json.dumps({"meta": meta, "figures": fig.items}, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
