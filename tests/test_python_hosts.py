"""Issue #9, Python programs anywhere: hosts outside the module's own virtual environment.

A Python program loads libkms-pkcs11.so into its own interpreter, with its own sys.path. The
module's package and dependencies come from the environment it was built in (abi/python_host.py),
without replacing what the host already imported:

- python-pkcs11 and PyKCS11 in another virtual environment (scripts/setup.sh makes it in
  .venv-hosts/plain) sign with KMS keys; signatures are checked here with cryptography;
- Debian's own python3 with Debian's PyKCS11 (python3-pykcs11) does too, when it is the module's
  X.Y, and gets the clear refusal otherwise;
- a host that already imported an asn1crypto older than the module needs gets CKR_GENERAL_ERROR
  from C_Initialize and one line naming what to install where;
- a Python of another X.Y gets the refusal, never a hang.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import utils
from hosts import verify_signature
from keyseed import key_entries, write_config

ROOT = Path(__file__).resolve().parents[1]
HOST_VENVS = ROOT / ".venv-hosts"
TIMEOUT = 60
MESSAGE = b"signed from a Python program of another environment"
REFUSAL = "the host runs another Python version than this module was built for"

PYTHON_PKCS11 = r'''
import sys
import pkcs11
from pkcs11 import Mechanism, ObjectClass
path_before = list(sys.path)
lib = pkcs11.lib(sys.argv[1])
with lib.get_token(token_label="acceptance").open() as s:
    for label, mechanism in (("web-tls", Mechanism.SHA256_RSA_PKCS), ("ec-sign", Mechanism.ECDSA_SHA256)):
        key = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        print(label, key.sign(sys.argv[2].encode(), mechanism=mechanism).hex())
import pkcs11_kms
assert sys.path == path_before, "sys.path changed"
print("package", pkcs11_kms.__file__)
'''

PYKCS11 = r'''
import sys
import PyKCS11
from PyKCS11 import LowLevel as L
lib = PyKCS11.PyKCS11Lib()
lib.load(sys.argv[1])
slot = next(s for s in lib.getSlotList(tokenPresent=True)
            if lib.getTokenInfo(s).label.strip() == "acceptance")
session = lib.openSession(slot)
for label, mechanism in (("web-tls", L.CKM_SHA256_RSA_PKCS), ("ec-sign", L.CKM_ECDSA_SHA256)):
    key = session.findObjects([(L.CKA_CLASS, L.CKO_PRIVATE_KEY), (L.CKA_LABEL, label)])[0]
    sig = session.sign(key, sys.argv[2].encode(), PyKCS11.Mechanism(mechanism, None))
    print(label, bytes(sig).hex())
session.closeSession()
'''

FIRST_ASN1CRYPTO = r'''
import sys
import asn1crypto  # the host's own, older than the module needs
import pkcs11
try:
    pkcs11.lib(sys.argv[1])
except pkcs11.exceptions.GeneralError:
    print("CKR_GENERAL_ERROR")
'''

CTYPES_INITIALIZE = r'''
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
print(hex(lib.C_Initialize(None)))
'''


@pytest.fixture(scope="module")
def env(kms_server, seeded, tmp_path_factory):
    """Token "acceptance": the RSA-2048 and P-256 signing keys, labelled web-tls and ec-sign."""
    entries = key_entries({n: seeded[n] for n in ("web-tls", "ec-sign")})
    config = write_config(tmp_path_factory.mktemp("python-hosts") / "config.toml", kms_server,
                          f'[[token]]\nlabel = "acceptance"\nkeys = [{entries}]\n')
    return {**os.environ, "PKCS11_KMS_CONFIG": config}


def host(python: str | Path, script: str, module_path: str, env, *args: str):
    proc = subprocess.run([str(python), "-c", script, module_path, *args], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL, cwd="/", check=False)
    assert proc.returncode >= 0, f"{python} died by signal {-proc.returncode}: {proc.stderr}"
    return proc


def host_venv(name: str) -> Path:
    python = HOST_VENVS / name / "bin" / "python"
    assert python.is_file(), f"{python} missing: run scripts/setup.sh"
    return python


def check_signatures(stdout: str, seeded) -> None:
    signatures = dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)
    verify_signature(seeded["web-tls"].public_der, bytes.fromhex(signatures["web-tls"]), MESSAGE,
                     hashes.SHA256())
    raw = bytes.fromhex(signatures["ec-sign"])
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                     int.from_bytes(raw[32:], "big"))
    verify_signature(seeded["ec-sign"].public_der, der, MESSAGE, hashes.SHA256())


def module_xy() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"  # the tests run the module's


def python_xy(python: str | Path) -> str:
    return subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout.strip()


def test_python_pkcs11_in_another_venv(module_path, env, seeded):
    python = host_venv("plain")
    assert not Path(sys.prefix).samefile(python.parent.parent)
    proc = host(python, PYTHON_PKCS11, module_path, env, MESSAGE.decode())
    assert proc.returncode == 0, proc.stderr
    check_signatures(proc.stdout, seeded)
    package = proc.stdout.rsplit("package ", 1)[1].strip()
    assert Path(package).parent.parent == ROOT or "site-packages" in package, package


def test_pykcs11_in_another_venv(module_path, env, seeded):
    proc = host(host_venv("plain"), PYKCS11, module_path, env, MESSAGE.decode())
    assert proc.returncode == 0, proc.stderr
    check_signatures(proc.stdout, seeded)


def test_debian_python3_with_debian_pykcs11(module_path, env, seeded):
    python = Path("/usr/bin/python3")
    assert python.is_file(), "Debian's python3 is missing"
    assert Path("/usr/lib/python3/dist-packages/PyKCS11").is_dir(), \
        "python3-pykcs11 is not installed (Debian package python3-pykcs11)"
    proc = host(python, PYKCS11, module_path, env, MESSAGE.decode())
    if python_xy(python) == module_xy():
        assert proc.returncode == 0, proc.stderr
        check_signatures(proc.stdout, seeded)
    else:
        assert proc.returncode != 0 and REFUSAL in proc.stderr, proc.stderr


def test_incompatible_dependency_already_imported(module_path, env):
    python = host_venv("old-asn1crypto")
    proc = host(python, FIRST_ASN1CRYPTO, module_path, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "CKR_GENERAL_ERROR", proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pkcs11-kms:")]
    assert len(lines) == 1, proc.stderr
    venv = python.parent.parent
    assert "asn1crypto 1.4.0" in lines[0] and "asn1crypto>=1.5" in lines[0], lines[0]
    assert f"into {venv}" in lines[0], lines[0]
    assert "pkcs11_kms/" not in proc.stderr  # none of our tracebacks (python-pkcs11 prints its own)


def other_pythons() -> list[str]:
    """Interpreters of another X.Y than the module's: pyenv's and Debian's."""
    found = {}
    for path in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3"))
                       + glob.glob("/usr/bin/python3.[0-9]*")):
        if path.endswith("-config"):
            continue
        xy = python_xy(path)
        if xy != module_xy():
            found.setdefault(xy, path)
    return list(found.values())


def test_other_python_version_is_refused(module_path, env):
    pythons = other_pythons()
    assert pythons, (f"no Python of another X.Y than {module_xy()} on this machine: install one "
                     "(pyenv) to test the refusal")
    for python in pythons:
        proc = host(python, CTYPES_INITIALIZE, module_path, env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "0x5", (python, proc.stdout)  # CKR_GENERAL_ERROR
        assert REFUSAL in proc.stderr, (python, proc.stderr)
