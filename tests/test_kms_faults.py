"""KMS faults seen from a host: a hung, dropped or failing KMS gives the documented CK_RV within the
configured timeout and one clear log line, and the host carries on."""

from __future__ import annotations

import os
import select
import subprocess
import sys

import pytest

from keyseed import seed_key, write_config

PROBE = """
import os, sys, pkcs11
from pkcs11 import Mechanism, ObjectClass
lib = pkcs11.lib(os.environ["MODULE"])
with lib.get_token(token_label="faults").open() as s:
    key = s.get_key(ObjectClass.PRIVATE_KEY, label="k")
    try:
        key.sign(b"data", mechanism=Mechanism.ECDSA_SHA256)
        print("signed")
    except pkcs11.exceptions.PKCS11Error as e:
        print(type(e).__name__)
    # the next call works once the fault is gone: nothing was left broken
    sys.stdout.flush()
    sys.stdin.readline()  # the test writes a line when it has cleared the fault
    print("after:", len(key.sign(b"data", mechanism=Mechanism.ECDSA_SHA256)))
"""


@pytest.fixture(scope="module")
def config(kms_server, tmp_path_factory):
    key = seed_key(kms_server.client(), None, "ECC_NIST_P256", "SIGN_VERIFY")
    return write_config(tmp_path_factory.mktemp("faults") / "config.toml", kms_server,
                        "connect_timeout = 1\nread_timeout = 1\nmax_attempts = 1\n"
                        f'[[token]]\nlabel = "faults"\nkeys = [{{ key = "{key.arn}", label = "k" }}]\n')


@pytest.mark.parametrize("fault, rv, code", [
    ({"hang_rate": 1.0}, "DEVICE_ERROR", "Timeout"),
    ({"drop_rate": 1.0}, "DEVICE_ERROR", "NetworkError"),
    ({"error_code": "ThrottlingException"}, "DEVICE_ERROR", "ThrottlingException"),
    ({"error_code": "KMSInternalException"}, "DEVICE_ERROR", "KMSInternalException"),
    ({"error_code": "DependencyTimeoutException"}, "DEVICE_ERROR", "DependencyTimeoutException"),
    ({"error_code": "KeyUnavailableException"}, "DEVICE_ERROR", "KeyUnavailableException"),
    ({"error_code": "KMSInvalidStateException"}, "KEY_FUNCTION_NOT_PERMITTED",
     "KMSInvalidStateException"),
    ({"error_code": "AccessDeniedException"}, "KEY_FUNCTION_NOT_PERMITTED", "AccessDeniedException"),
    ({"http_status": 503}, "DEVICE_ERROR", "503"),
])
def test_fault_gives_ck_rv_and_one_log_line(kms_server, config, module_path, fault, rv, code):
    """max_attempts = 1 and a 1 s read timeout: a hung request ends within the deadline."""
    env = {**os.environ, "PKCS11_KMS_CONFIG": config, "MODULE": module_path}
    kms_server.set_faults(operations=["Sign"], **fault)
    proc = subprocess.Popen([sys.executable, "-c", PROBE], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The probe's first answer, within a deadline (a hang is a failure, not a wait forever).
        readable, _, _ = select.select([proc.stdout], [], [], 60)
        assert readable, "the host did not answer within 60 s"
        first = proc.stdout.readline().strip()
        kms_server.clear_faults()
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        kms_server.clear_faults()
        if proc.poll() is None:
            proc.kill()
    assert first not in ("", "signed"), err  # the host got an error, not a hang or a signature
    assert out.strip() == "after: 64", err
    lines = [line for line in err.splitlines() if "KMS Sign failed" in line]
    assert len(lines) == 1, err
    assert f"code={code}" in lines[0] and f"rv={rv}" in lines[0], lines[0]
    if rv == "DEVICE_ERROR":
        assert first == "DeviceError"
    assert "Traceback" not in err
