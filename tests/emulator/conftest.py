"""Fixtures for the emulator's fidelity suite: one emulator per session, its keys created once."""

from __future__ import annotations

import shutil

import pytest
from botocore.config import Config
from emulator_support import NO_RETRY, EmuKey, new_key

from pkcs11_kms.emulator.specs import KEY_SPECS
from pkcs11_kms.emulator.testing import EmulatorProcess


@pytest.fixture(scope="session")
def emulator():
    with EmulatorProcess() as server:
        yield server


@pytest.fixture(scope="session")
def kms(emulator):
    return emulator.client(config=NO_RETRY)


@pytest.fixture(scope="session")
def raw_kms(emulator):
    """A client that skips botocore's own parameter checks, to reach the server's."""
    return emulator.client(config=NO_RETRY.merge(Config(parameter_validation=False)))


@pytest.fixture(scope="session")
def keys(kms) -> dict[tuple[str, str], EmuKey]:
    """One key per (key spec, usage) the suite signs or encrypts with, plus symmetric ones."""
    wanted = [(spec, "SIGN_VERIFY") for spec in KEY_SPECS]
    wanted += [(spec, "ENCRYPT_DECRYPT") for spec, info in KEY_SPECS.items() if info.encryption]
    wanted += [("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"), ("HMAC_256", "GENERATE_VERIFY_MAC"),
               ("ECC_NIST_P256", "KEY_AGREEMENT")]
    return {(spec, usage): new_key(kms, spec, usage) for spec, usage in wanted}


@pytest.fixture
def faults(emulator):
    """The emulator, with every fault cleared after the test."""
    emulator.clear_faults()
    yield emulator
    emulator.clear_faults()


@pytest.fixture(scope="session")
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("the openssl binary is not installed")
    return path
