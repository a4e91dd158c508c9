"""The built library from a small C host (tests/harness/p11harness.c): what the stock tools cannot
reach - the interface list without Python, C_Initialize's arguments, fork, the failed-start path
and SIGINT (docs/design.md, "A failed start", "Signals" and "Fork")."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

OK_INIT = [
    "C_Initialize rv=0x0",
    "C_Initialize again rv=0x191",  # CKR_CRYPTOKI_ALREADY_INITIALIZED
    "C_GetSlotList rv=0x0 count=1",
    "C_Finalize rv=0x0",
    "C_Finalize again rv=0x190",  # CKR_CRYPTOKI_NOT_INITIALIZED
]
OBJECTS_OK = "objects rv=0x0 count=6 labelled=6"


@pytest.fixture(scope="session")
def broken_config(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("broken") / "config.toml"
    path.write_text('regoin = "eu-west-1"\n[[token\n')
    return str(path)


@pytest.fixture
def env(acceptance_config) -> dict[str, str]:
    return dict(os.environ, PKCS11_KMS_CONFIG=acceptance_config)


def run(harness: str, module: str, *args: str, env: dict[str, str], timeout: float = 60, **kw):
    proc = subprocess.run(
        [harness, module, *args], env=env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, **kw,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def lines(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, f"rc={proc.returncode} out={proc.stdout!r} err={proc.stderr!r}"
    return proc.stdout.splitlines()


# ---- C_GetInterfaceList / C_GetInterface / C_GetFunctionList: C only -----------------------------


def test_interfaces_without_python(harness, module_path, broken_config):
    """Answered in C: works with a broken config (Python would refuse it) and says nothing."""
    env = dict(os.environ, PKCS11_KMS_CONFIG=broken_config)
    proc = run(harness, module_path, "interfaces", env=env)
    assert lines(proc) == [
        "C_GetInterfaceList count rv=0x0 count=2",
        "C_GetInterfaceList small rv=0x150 count=2",  # CKR_BUFFER_TOO_SMALL
        "interface 0 name=[PKCS 11] version=3.0",
        "interface 1 name=[PKCS 11] version=2.40",
        "C_GetInterface default rv=0x0 version=3.0",
        "C_GetInterface 2.40 rv=0x0 version=2.40",
        "C_GetInterface 3.0 rv=0x0",
        "C_GetInterface 9.9 rv=0x7",  # CKR_ARGUMENTS_BAD
        "C_GetInterface vendor rv=0x7",
        "C_GetFunctionList rv=0x0 version=2.40",
        "C_GetFunctionList null rv=0x7",
    ]
    assert proc.stderr == ""


# ---- C_Initialize arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, callbacks, expected",
    [
        (0, 0, OK_INIT),
        (2, 0, OK_INIT),  # CKF_OS_LOCKING_OK: pkcs11-tool, libp11
        (3, 0, OK_INIT),  # | CKF_LIBRARY_CANT_CREATE_OS_THREADS: NSS, p11tool
        (1, 0, OK_INIT),
        (2, 4, OK_INIT),
        (3, 4, OK_INIT),
        (0, 4, ["C_Initialize rv=0xa"]),  # CKR_CANT_LOCK: we cannot use the app's mutexes only
        (2, 3, ["C_Initialize rv=0x7"]),  # some callbacks but not all: CKR_ARGUMENTS_BAD
        (0, 3, ["C_Initialize rv=0x7"]),
    ],
)
def test_initialize_flags_and_callbacks(harness, module_path, env, flags, callbacks, expected):
    proc = run(harness, module_path, "init", str(flags), str(callbacks), env=env)
    assert lines(proc) == expected
    assert "pkcs11-kms[" not in proc.stderr, proc.stderr


def test_initialize_reserved_config_path_wins(harness, module_path, acceptance_config,
                                              broken_config):
    env = dict(os.environ, PKCS11_KMS_CONFIG=broken_config)
    proc = run(harness, module_path, "init", "2", "0", acceptance_config, env=env)
    assert lines(proc) == OK_INIT
    assert proc.stderr == ""


def test_initialize_reserved_missing_file(harness, module_path, env):
    proc = run(harness, module_path, "init", "2", "0", "/nonexistent.toml", env=env)
    assert lines(proc) == ["C_Initialize rv=0x6"]  # CKR_FUNCTION_FAILED
    assert "/nonexistent.toml" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


NSS_PARAMETERS = "configdir='sql:/tmp/db' certPrefix='' keyPrefix='' secmod='secmod.db' flags= "


@pytest.mark.parametrize(
    "reserved, expected",
    [
        (NSS_PARAMETERS, OK_INIT),  # not a path: ignored, $PKCS11_KMS_CONFIG applies
        ("", OK_INIT),
        ("config.conf", OK_INIT),  # an existing file (relative to the cwd): used
        ("missing.toml", ["C_Initialize rv=0x6"]),  # clearly a path (.toml): must exist
        ("./missing", ["C_Initialize rv=0x6"]),
        ("~/missing", ["C_Initialize rv=0x6"]),
    ],
    ids=["nss-parameters", "empty", "existing-file", "toml-suffix", "dot-slash", "tilde"],
)
def test_initialize_reserved_strings(harness, module_path, acceptance_config, broken_config,
                                     tmp_path, reserved, expected):
    """docs/configuration.md: pReserved is a config path only when it names an existing file or
    clearly is a path."""
    (tmp_path / "config.conf").write_text(Path(acceptance_config).read_text())
    env = dict(os.environ, PKCS11_KMS_CONFIG=acceptance_config, HOME=str(tmp_path))
    if reserved == "config.conf":
        env["PKCS11_KMS_CONFIG"] = broken_config  # pReserved must win
    proc = run(harness, module_path, "init", "3", "0", reserved, env=env, cwd=tmp_path)
    assert lines(proc) == expected
    if expected == OK_INIT:
        assert proc.stderr == ""
    else:
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        assert "no such file (named by C_Initialize pReserved)" in proc.stderr


def test_null_init_and_info(harness, module_path, env):
    proc = run(harness, module_path, "null-init", env=env)
    assert lines(proc) == [
        "C_GetSlotList before rv=0x190",
        "C_Initialize rv=0x0",
        "C_GetInfo rv=0x0 version=2.40 manufacturer=[" + "pkcs11-kms".ljust(32) + "]"
        " description=[" + "AWS KMS PKCS#11 module".ljust(32) + "]",
    ]


@pytest.mark.parametrize("flags", ["2", "3"], ids=["threaded", "no-threads"])
def test_finalize_after_kms_calls(harness, module_path, env, flags):
    """C_Finalize closes the KMS loop (in our thread, or the caller's when threads are forbidden),
    and the next C_Initialize starts afresh - three rounds, each calling KMS (C_GenerateRandom).
    A host that passes CKF_LIBRARY_CANT_CREATE_OS_THREADS gets no thread of ours (docs/design.md,
    "Threads")."""
    proc = run(harness, module_path, "objects", flags, "3", env=env)
    out = lines(proc)
    threads = [int(line.split("=")[1]) for line in out if line.startswith("threads=")]
    assert [line for line in out if not line.startswith("threads=")] == [
        "C_Initialize rv=0x0", OBJECTS_OK, "C_GenerateRandom rv=0x0", "C_Finalize rv=0x0"
    ] * 3
    assert len(threads) == 3
    if flags == "3":
        assert threads == [1, 1, 1]
    else:
        assert min(threads) > 1  # the KMS loop thread, started again after each C_Finalize
    assert "pkcs11-kms[" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "flags, lc_all, host_locale, locale",
    [("2", None, None, "C"), ("0", "C.UTF-8", None, "C"), ("3", "C.UTF-8", "C.UTF-8", "C.UTF-8")],
    ids=["threaded", "env-locale-not-adopted", "host-locale-kept"],
)
def test_host_locale_and_signals_untouched(harness, module_path, env, flags, lc_all, host_locale,
                                           locale):
    """The interpreter start must not adopt the environment's locale for the host, nor leave a
    signal disposition changed (docs/design.md, "Signals") - also after KMS calls."""
    if lc_all:
        env = dict(env, LC_ALL=lc_all)
    args = ["host-state", flags] + ([host_locale] if host_locale else [])
    proc = run(harness, module_path, *args, env=env)
    assert lines(proc) == [
        "C_Initialize rv=0x0",
        OBJECTS_OK,
        "C_GenerateRandom rv=0x0",
        f"locale before={locale} after={locale}",
        "signals changed=0",
        "C_Finalize rv=0x0",
    ]


# ---- fork ----------------------------------------------------------------------------------------


def test_fork_children(harness, module_path, env):
    proc = run(harness, module_path, "fork", "8", env=env)
    assert lines(proc) == [
        "C_Initialize rv=0x0",
        "C_OpenSession rv=0x0",
        "children ok=8 of 8",
        "C_GetSessionInfo parent rv=0x0",
    ]


def test_fork_children_after_kms_calls(harness, module_path, env):
    """The parent's KMS loop thread is running when it forks; every child re-initialises and
    lists the objects again."""
    proc = run(harness, module_path, "fork", "8", "objects", env=env)
    assert lines(proc) == [
        "C_Initialize rv=0x0",
        "C_OpenSession rv=0x0",
        *[OBJECTS_OK] * 9,
        "children ok=8 of 8",
        "C_GetSessionInfo parent rv=0x0",
    ]


# ---- the failed start (docs/design.md, "A failed start") ----------------------------------------


def build_library_for(python: str, out: Path) -> str:
    env = dict(os.environ, PKCS11_KMS_PYTHON=python)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "build_ffi.py"), str(out)], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    path = out / "libkms-pkcs11.so"
    assert path.is_file()
    return str(path)


@pytest.fixture(scope="session")
def unstartable_module(tmp_path_factory, harness, acceptance_config) -> str:
    """A copy of the library whose interpreter cannot import pkcs11_kms, so the start fails: bound
    to an interpreter that does not exist or, should Python find the package anyway, to a fresh
    venv without it."""
    path = build_library_for("/nonexistent/bin/python3", tmp_path_factory.mktemp("unstartable"))
    env = dict(os.environ, PKCS11_KMS_CONFIG=acceptance_config)
    probe = subprocess.run([harness, path, "null-init"], env=env, capture_output=True, text=True,
                           timeout=60)
    if "C_Initialize rv=0x0" in probe.stdout:
        venv = tmp_path_factory.mktemp("empty-venv")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        path = build_library_for(str(venv / "bin" / "python"),
                                 tmp_path_factory.mktemp("unstartable-venv"))
    return path


def test_failed_start_is_general_error(harness, unstartable_module, env):
    proc = subprocess.run(
        [harness, unstartable_module, "null-init"], env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert lines(proc) == [
        "C_GetSlotList before rv=0x5",  # CKR_GENERAL_ERROR, never CKR_OK
        "C_Initialize rv=0x5",
        "C_GetInfo rv=0x5 version=0.0 manufacturer=[] description=[]",  # output left untouched
    ]
    assert "ModuleNotFoundError: No module named" in proc.stderr
    assert "pkcs11-kms: cannot load the pkcs11_kms Python package" in proc.stderr


def test_failed_start_pkcs11_tool(unstartable_module, env):
    pkcs11_tool = shutil.which("pkcs11-tool")
    assert pkcs11_tool, "pkcs11-tool is not installed (Debian package opensc)"
    proc = subprocess.run(
        [pkcs11_tool, "--module", unstartable_module, "-L"], env=env, capture_output=True,
        text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1, proc.stderr  # "Aborting.", not a signal
    assert "CKR_GENERAL_ERROR" in proc.stderr
    assert "Available slots" not in proc.stdout


# ---- SIGINT (docs/design.md, "Signals") ----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("2",), ("3",), ("0", "objects"), ("2", "objects"), ("3", "objects")],
    ids=["threaded", "no-threads", "flags0-kms", "threaded-kms", "no-threads-kms"],
)
def test_sigint_still_stops_the_host(harness, module_path, env, args):
    proc = subprocess.run(
        [harness, module_path, "sigint", *args], env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGINT, (proc.returncode, proc.stdout, proc.stderr)
    out = proc.stdout.splitlines()
    assert out[:2] == ["C_Initialize rv=0x0", "C_GetSlotList rv=0x0 count=1"]
    if "objects" in args:
        assert out[2] == OBJECTS_OK
    assert out[-1] == "SIGINT handler default=1"
    assert "survived" not in proc.stdout
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr


def test_threads_sign_concurrently(harness, module_path, env, kms_server):
    """8 C threads with a session each, KMS calls at once, 50 ms of injected KMS latency: every
    call succeeds (the speed-up is measured in bench/threads.py, not asserted here)."""
    kms_server.set_faults(latency_ms=50, operations=["GenerateRandom"])
    try:
        out = lines(run(harness, module_path, "threads", "8", "4", env=env, timeout=120))
    finally:
        kms_server.clear_faults()
    assert out[0] == "C_Initialize rv=0x0"
    assert out[-1].startswith("threads calls_ok=32 of 32 ")


def test_sigint_survives_a_package_that_fails_to_load(harness, tmp_path, env):
    """A library bound to the base interpreter (Python starts, `import signal` runs, then the
    pkcs11_kms package is missing): every call is CKR_GENERAL_ERROR and Ctrl-C still stops the
    host (docs/design.md, "Signals")."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    module = build_library_for(base, tmp_path)
    proc = subprocess.run([harness, module, "sigint", "2"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGINT, (proc.returncode, proc.stdout, proc.stderr)
    out = proc.stdout.splitlines()
    assert out[0] == "C_Initialize rv=0x5"
    assert out[-1] == "SIGINT handler default=1"
