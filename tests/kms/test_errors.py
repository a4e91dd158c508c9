"""The KMS error table, the translation of botocore's exceptions, and what the core makes of a
KmsError: its CK_RV and the one log line (core/kms_errors.py)."""

from __future__ import annotations

import concurrent.futures
import logging

import pytest
from botocore import exceptions as bx

from pkcs11_kms.ck import CKR
from pkcs11_kms.core.kms_errors import failure, rv_for
from pkcs11_kms.errors import PKCS11Error
from pkcs11_kms.kms import ERROR_TABLE, AwsKms, Connection, KmsError
from pkcs11_kms.kms.aws import _translate
from pkcs11_kms.kms.loop import DeadlineExceeded, InterpreterExiting, ReentrantCall

# The decisions, pinned: a change here is a change of what consumers see.
EXPECTED = {
    "NotFoundException": CKR.KEY_HANDLE_INVALID,
    "InvalidArnException": CKR.KEY_HANDLE_INVALID,
    "DisabledException": CKR.KEY_FUNCTION_NOT_PERMITTED,
    "KMSInvalidStateException": CKR.KEY_FUNCTION_NOT_PERMITTED,
    "InvalidKeyUsageException": CKR.KEY_FUNCTION_NOT_PERMITTED,
    "AccessDeniedException": CKR.KEY_FUNCTION_NOT_PERMITTED,
    "InvalidCiphertextException": CKR.ENCRYPTED_DATA_INVALID,
    "IncorrectKeyException": CKR.ENCRYPTED_DATA_INVALID,
    "KMSInvalidSignatureException": CKR.SIGNATURE_INVALID,
    "ValidationException": CKR.DATA_LEN_RANGE,
    "UnsupportedOperationException": CKR.FUNCTION_NOT_SUPPORTED,
    "KeyUnavailableException": CKR.DEVICE_ERROR,
    "ThrottlingException": CKR.DEVICE_ERROR,
    "LimitExceededException": CKR.DEVICE_ERROR,
    "DependencyTimeoutException": CKR.DEVICE_ERROR,
    "KMSInternalException": CKR.DEVICE_ERROR,
    "InternalFailure": CKR.DEVICE_ERROR,
    "ServiceUnavailable": CKR.DEVICE_ERROR,
    "UnrecognizedClientException": CKR.DEVICE_ERROR,
    "InvalidSignatureException": CKR.DEVICE_ERROR,
    "ExpiredTokenException": CKR.DEVICE_ERROR,
    "NetworkError": CKR.DEVICE_ERROR,
    "TlsError": CKR.DEVICE_ERROR,
    "Timeout": CKR.DEVICE_ERROR,
    "NoCredentials": CKR.DEVICE_ERROR,
    "NoRegion": CKR.DEVICE_ERROR,
    "ProfileNotFound": CKR.DEVICE_ERROR,
    "Reentrant": CKR.FUNCTION_FAILED,
    "Cancelled": CKR.FUNCTION_FAILED,
}


def test_table_is_as_decided():
    assert {code: rv_for(code) for code in ERROR_TABLE} == EXPECTED
    assert all(why for _, _, why in ERROR_TABLE.values())
    numbers = [number for _, number, _ in ERROR_TABLE.values()]
    assert len(set(numbers)) == len(numbers) and all(0 < n < 500 for n in numbers)


@pytest.mark.parametrize("code,rv", EXPECTED.items())
def test_kms_error_rv(code, rv):
    error = KmsError(code, "Sign", "alias/k", "req-1", "why")
    assert rv_for(error) == rv_for(code) == rv
    assert not isinstance(error, PKCS11Error)  # the backend speaks KMS; the core's edge translates
    translated = failure(error)
    assert (translated.rv, translated.device_error) == (rv, ERROR_TABLE[code][1])


@pytest.mark.parametrize(
    "code,rv",
    [("SomethingNew", CKR.FUNCTION_FAILED), ("503", CKR.DEVICE_ERROR),
     ("403", CKR.FUNCTION_FAILED)],
)
def test_unknown_codes(code, rv):
    assert rv_for(code) == rv


def test_fields():
    error = KmsError("NotFoundException", "GetPublicKey", "alias/x", "req-9", "gone")
    assert (error.code, error.operation, error.key, error.request_id, error.message) == (
        "NotFoundException", "GetPublicKey", "alias/x", "req-9", "gone")  # fmt: skip
    assert "GetPublicKey" in str(error) and "NotFoundException" in str(error)


def records(caplog):
    return [r for r in caplog.records if r.name == "pkcs11_kms.kms"]


def test_failure_logs_one_line(caplog):
    caplog.set_level(logging.DEBUG, "pkcs11_kms.kms")
    error = failure(
        KmsError("ThrottlingException", "Sign", "arn:aws:kms:r:1:key/k", "req-42", "slow down"))
    (record,) = records(caplog)
    line = record.getMessage()
    for part in ("Sign", "arn:aws:kms:r:1:key/k", "ThrottlingException", "req-42", "DEVICE_ERROR"):
        assert part in line
    assert record.levelno == logging.WARNING
    assert error.rv == CKR.DEVICE_ERROR


def test_setup_failures_log_an_error_with_a_hint(caplog):
    caplog.set_level(logging.DEBUG, "pkcs11_kms.kms")
    failure(KmsError("NoCredentials", "Sign", "alias/k"))
    (record,) = records(caplog)
    assert record.levelno == logging.ERROR
    assert "AWS_PROFILE" in record.getMessage()


def client_error(code: str, status: int = 400) -> bx.ClientError:
    response = {
        "Error": {"Code": code, "Message": f"message of {code}"},
        "ResponseMetadata": {"RequestId": "req-7", "HTTPStatusCode": status},
    }
    return bx.ClientError(response, "Sign")


URL = "https://kms.eu-west-1.amazonaws.com/"
TRANSLATIONS = [
    (client_error("DisabledException"), "DisabledException"),
    (client_error("KMSInternalException", 500), "KMSInternalException"),
    (bx.ClientError({"ResponseMetadata": {"HTTPStatusCode": 503}}, "Sign"), "503"),
    (bx.EndpointConnectionError(endpoint_url=URL), "NetworkError"),
    (bx.ConnectionClosedError(endpoint_url=URL), "NetworkError"),
    (bx.ProxyConnectionError(proxy_url="http://proxy"), "NetworkError"),
    (bx.ReadTimeoutError(endpoint_url=URL), "Timeout"),
    (bx.ConnectTimeoutError(endpoint_url=URL), "Timeout"),
    (bx.SSLError(endpoint_url=URL, error="certificate verify failed"), "TlsError"),
    (bx.NoCredentialsError(), "NoCredentials"),
    (bx.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), "NoCredentials"),
    (bx.CredentialRetrievalError(provider="sso", error_msg="expired"), "NoCredentials"),
    (bx.NoRegionError(), "NoRegion"),
    (bx.ProfileNotFound(profile="nope"), "ProfileNotFound"),
    (DeadlineExceeded("late"), "Timeout"),
    (ReentrantCall("again"), "Reentrant"),
    (InterpreterExiting("exit"), "Cancelled"),
    (concurrent.futures.CancelledError(), "Cancelled"),
    (ValueError("boom"), "ValueError"),
]


@pytest.mark.parametrize("exc,code", TRANSLATIONS, ids=[type(e).__name__ for e, _ in TRANSLATIONS])
def test_translate(exc, code, caplog):
    caplog.set_level(logging.DEBUG, "pkcs11_kms.kms")
    error = _translate(exc, "Sign", "alias/k")
    assert (error.code, error.operation, error.key) == (code, "Sign", "alias/k")
    if isinstance(exc, bx.ClientError) and code != "503":
        assert error.request_id == "req-7"
        assert error.message == f"message of {code}"
    assert records(caplog) == []  # the backend logs nothing: the core's edge writes the line
    assert failure(error).rv == rv_for(code)
    assert len(records(caplog)) == 1


def test_translate_never_repeats_request_data(caplog):
    caplog.set_level(logging.DEBUG, "pkcs11_kms.kms")
    secret = "PLAINTEXT-SECRET-0123"
    report = f"Invalid type for parameter Plaintext, value: {secret}, type: <class 'str'>"
    for exc in (bx.ParamValidationError(report=report), TypeError(secret)):
        error = _translate(exc, "Encrypt", "alias/k")
        assert secret not in str(error)
        failure(error)
    assert error.code == "TypeError"
    assert _translate(bx.ParamValidationError(report=report), "Encrypt", None).message == (
        "invalid Plaintext"
    )
    assert all(secret not in r.getMessage() for r in records(caplog))


def test_kms_messages_quoting_data_are_redacted():
    echo = bx.ClientError({"Error": {"Code": "ValidationException", "Message":
        "1 validation error detected: Value 'U0VDUkVU' at 'plaintext' failed to satisfy "
        "constraint; Value 'RSA_RAW' at 'encryptionAlgorithm' is not valid"}}, "Encrypt")  # fmt: skip
    message = _translate(echo, "Encrypt", "k").message
    assert "U0VDUkVU" not in message and "Value at 'plaintext'" in message
    assert "RSA_RAW" in message  # names of algorithms are no secret


def test_expected_answers_are_not_logged(caplog):
    caplog.set_level(logging.DEBUG, "pkcs11_kms.kms")
    error = _translate(client_error("DryRunOperationException"), "Sign", "k")
    assert error.code == "DryRunOperationException"
    assert records(caplog) == []


def test_emulator_failures_log_one_line_without_data(kms_server, caplog):
    caplog.set_level(logging.DEBUG, "pkcs11_kms.kms")
    key_id = kms_server.client().create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")[
        "KeyMetadata"]["KeyId"]
    backend = AwsKms(Connection(region="eu-west-1", endpoint_url=kms_server.endpoint_url))
    secret = b"SECRET-MESSAGE-THAT-IS-NOT-A-DIGEST"
    with pytest.raises(KmsError) as caught:
        backend.sign(key_id, secret, "DIGEST", "ECDSA_SHA_256")
    failure(caught.value)
    (record,) = records(caplog)
    assert key_id in record.getMessage() and "ValidationException" in record.getMessage()
    assert "SECRET" not in record.getMessage()
