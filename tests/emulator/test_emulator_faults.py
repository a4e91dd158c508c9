"""Fault and latency injection, switched on and off while the emulator runs."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
from emulator_support import NO_RETRY, error_code


def _elapsed(call) -> float:
    start = time.monotonic()
    call()
    return time.monotonic() - start


def test_fixed_latency(faults, kms):
    faults.set_faults(latency_ms=300)
    assert 0.29 <= _elapsed(kms.list_keys) < 3.0
    faults.clear_faults()
    assert _elapsed(kms.list_keys) < 0.29


def test_jittered_latency(faults, kms):
    faults.set_faults(latency_ms=100, jitter_ms=200, seed=7)
    times = [_elapsed(kms.list_keys) for _ in range(5)]
    assert all(0.099 <= t < 2.0 for t in times)
    assert max(times) - min(times) > 0.005  # not one fixed delay
    assert faults.faults()["stats"]["delayed"] == 5


ERRORS = [
    # (error_code, http_status, expected code, expected HTTP status)
    ("ThrottlingException", None, "ThrottlingException", 400),
    ("KMSInternalException", None, "KMSInternalException", 500),
    ("DependencyTimeoutException", None, "DependencyTimeoutException", 503),
    ("KeyUnavailableException", None, "KeyUnavailableException", 500),
    ("ThrottlingException", 429, "ThrottlingException", 429),
    (None, 500, "500", 500),
    (None, 503, "503", 503),
]


@pytest.mark.parametrize("code,status,expected_code,expected_status", ERRORS)
def test_error_responses(faults, kms, code, status, expected_code, expected_status):
    faults.set_faults(error_code=code, http_status=status)
    with pytest.raises(ClientError) as exc:
        kms.list_keys()
    assert error_code(exc) == expected_code
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == expected_status


def test_error_rate_is_a_rate(faults, kms):
    faults.set_faults(error_code="ThrottlingException", error_rate=0.5, seed=1)
    outcomes = []
    for _ in range(40):
        try:
            kms.list_keys()
            outcomes.append(True)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ThrottlingException"
            outcomes.append(False)
    assert 5 <= outcomes.count(False) <= 35
    assert faults.faults()["stats"]["errors"] == outcomes.count(False)


def test_only_chosen_operations(faults, kms, keys):
    key = keys["ECC_NIST_P256", "SIGN_VERIFY"]
    faults.set_faults(error_code="KMSInternalException", operations=["Sign"])
    kms.list_keys()
    kms.get_public_key(KeyId=key.key_id)
    with pytest.raises(ClientError) as exc:
        kms.sign(KeyId=key.key_id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    assert error_code(exc) == "KMSInternalException"


def test_max_faults_lets_retries_succeed(faults, emulator):
    """One KMSInternalException, then success: botocore's standard retry gets through."""
    faults.set_faults(error_code="KMSInternalException", max_faults=1)
    client = emulator.client(config=Config(retries={"mode": "standard", "total_max_attempts": 2}))
    response = client.list_keys()
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    assert faults.faults()["stats"]["errors"] == 1
    client.list_keys()  # the budget is spent: no more faults


def test_dropped_connection(faults, emulator):
    faults.set_faults(drop_rate=1.0)
    client = emulator.client(config=NO_RETRY.merge(Config(read_timeout=5)))
    start = time.monotonic()
    with pytest.raises(ConnectionClosedError):
        client.list_keys()
    assert time.monotonic() - start < 4
    faults.clear_faults()
    client.list_keys()


def test_hung_request(faults, emulator):
    faults.set_faults(hang_rate=1.0, operations=["ListKeys"])
    client = emulator.client(config=NO_RETRY.merge(Config(read_timeout=1)))
    start = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        client.list_keys()
    assert time.monotonic() - start < 4
    assert faults.faults()["stats"]["hangs"] == 1
    faults.clear_faults()  # releases the hung request
    client.list_keys()


def test_settings_round_trip(faults):
    state = faults.set_faults({"latency_ms": 5, "operations": ["Sign", "Verify"]}, seed=3)
    assert state["faults"]["latency_ms"] == 5
    assert state["faults"]["operations"] == ["Sign", "Verify"]
    assert faults.faults()["faults"]["seed"] == 3
    assert faults.clear_faults()["faults"]["latency_ms"] == 0


@pytest.mark.parametrize("body", [
    b"not json", b"[1, 2]", json.dumps({"latency": 5}).encode(),
    json.dumps({"error_rate": 2}).encode(), json.dumps({"drop_rate": -1}).encode(),
    json.dumps({"http_status": 200}).encode(), json.dumps({"latency_ms": "slow"}).encode(),
])
def test_bad_settings_are_refused(faults, body):
    request = urllib.request.Request(faults.endpoint_url + "/_emulator/faults", data=body,
                                     method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as exc:
        opener.open(request, timeout=5)
    assert exc.value.code == 400
    assert faults.faults()["faults"]["error_rate"] == 0
