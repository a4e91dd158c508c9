"""Fixtures of the KMS backend tests: the backend targets, moto, a scripted KMS endpoint."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from pkcs11_kms import kms
from pkcs11_kms.kms import loop

from .kmstest import EXACT_TARGETS, MotoServer, ScriptedKms, Target, free_port, moto_target


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "exact_kms: needs AWS KMS's own Sign/Decrypt/key-state semantics: runs only on targets "
        "that have them (the project's emulator), never on plain moto",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" in metafunc.fixturenames:
        exact = metafunc.definition.get_closest_marker("exact_kms") is not None
        names = [name for name, ok in EXACT_TARGETS.items() if ok or not exact]
        metafunc.parametrize("target", names, indirect=True)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """Plain moto on loopback: right about keys, aliases, tags and listing, wrong about Sign and
    Decrypt (tests/conftest.py's kms_server is the project's emulator, which fixes those)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield MotoServer(f"http://127.0.0.1:{port}", proc)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def _targets(request: pytest.FixtureRequest) -> dict[str, Target]:
    """Each target once per session (clients and shared keys are slow to make)."""
    return {}


@pytest.fixture
def target(request: pytest.FixtureRequest, _targets: dict[str, Target]) -> Target:
    name = request.param
    if name not in _targets:
        if name == "moto":
            _targets[name] = moto_target(name, request.getfixturevalue("moto_server"))
        elif name == "emulator":
            _targets[name] = moto_target(name, request.getfixturevalue("kms_server"))
        else:
            raise ValueError(name)
    return _targets[name]


@pytest.fixture
def fresh_loop() -> Iterator[None]:
    """A new loop generation before and after: clients re-read the environment."""
    kms.set_threads_allowed(True)
    kms.shutdown()
    yield
    kms.set_threads_allowed(True)
    kms.shutdown()


@pytest.fixture
def scripted() -> Iterator[ScriptedKms]:
    server = ScriptedKms()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _threads_back_on() -> Iterator[None]:
    yield
    loop.set_threads_allowed(True)
