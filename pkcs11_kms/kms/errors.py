"""KmsError: a failed KMS call, its KMS error code, and the one table from codes to CK_RV."""

from __future__ import annotations

import logging

from ..ck import CKR
from ..errors import PKCS11Error

logger = logging.getLogger("pkcs11_kms.kms")

# KMS error code (or one of ours, for failures that never reached KMS) -> (CK_RV, device error
# number, why a token answers that). KMS codes are the `__type` of its JSON errors; ours have no
# "Exception" suffix. The CK_RV is the one for a *Init or single-part call; abi/entry.py fits it
# into each function's allowed set (core/returns.py). The number is what C_GetSessionInfo reports
# in ulDeviceError after a call failed on KMS (docs/design.md, "Device errors"): stable, never
# reused; bare HTTP statuses report themselves (500-599), an unknown code UNKNOWN_DEVICE_ERROR.
ERROR_TABLE: dict[str, tuple[CKR, int, str]] = {
    # The key the handle named is gone: PKCS#11's word for a handle with nothing behind it.
    "NotFoundException": (CKR.KEY_HANDLE_INVALID, 1, "no such key or alias"),
    "InvalidArnException": (CKR.KEY_HANDLE_INVALID, 2, "the key id is not a well-formed ARN"),
    # The key exists but may not do this now, or ever: the spec's "key function not permitted".
    "DisabledException": (CKR.KEY_FUNCTION_NOT_PERMITTED, 3, "the key is disabled"),
    "KMSInvalidStateException": (
        CKR.KEY_FUNCTION_NOT_PERMITTED, 4, "the key is pending deletion or import"),
    "InvalidKeyUsageException": (
        CKR.KEY_FUNCTION_NOT_PERMITTED, 5,
        "key usage or key spec does not allow this operation or algorithm"),
    # IAM or the key policy refuses this principal the function. Not FUNCTION_REJECTED: that one
    # means a user declined a signature request; not USER_NOT_LOGGED_IN: a PIN cannot fix it.
    "AccessDeniedException": (
        CKR.KEY_FUNCTION_NOT_PERMITTED, 6, "IAM or key policy denies this operation"),
    # The data is wrong for the key: the spec's data/ciphertext/signature return values.
    "InvalidCiphertextException": (CKR.ENCRYPTED_DATA_INVALID, 7, "ciphertext is not valid"),
    "IncorrectKeyException": (
        CKR.ENCRYPTED_DATA_INVALID, 8, "ciphertext was made under another key"),
    "KMSInvalidSignatureException": (CKR.SIGNATURE_INVALID, 9, "signature does not verify"),
    # KMS (or botocore's check of the API's ranges) rejects a value: a digest that is not the
    # algorithm's hash length, a message over 4096 bytes, a random count outside 1..1024. The core
    # checks these first, so what reaches here is a length the token cannot take.
    "ValidationException": (CKR.DATA_LEN_RANGE, 10, "a request value is out of KMS's range"),
    "UnsupportedOperationException": (
        CKR.FUNCTION_NOT_SUPPORTED, 11, "KMS does not support this on this key"),
    # The device is there but failing: the consumer may retry later.
    "KeyUnavailableException": (CKR.DEVICE_ERROR, 12, "key material temporarily unavailable"),
    "ThrottlingException": (CKR.DEVICE_ERROR, 13, "throttled, still after botocore's retries"),
    "LimitExceededException": (CKR.DEVICE_ERROR, 14, "a KMS quota is exceeded"),
    "DependencyTimeoutException": (CKR.DEVICE_ERROR, 15, "KMS timed out internally"),
    "KMSInternalException": (CKR.DEVICE_ERROR, 16, "KMS internal error"),
    "InternalFailure": (CKR.DEVICE_ERROR, 17, "AWS internal error"),
    "ServiceUnavailable": (CKR.DEVICE_ERROR, 18, "AWS service unavailable"),
    # The credentials are refused: the device cannot be reached as anyone (log says which).
    "UnrecognizedClientException": (CKR.DEVICE_ERROR, 19, "unknown access key id"),
    "InvalidSignatureException": (
        CKR.DEVICE_ERROR, 20, "request signature refused (secret or clock)"),
    "ExpiredTokenException": (CKR.DEVICE_ERROR, 21, "session token expired"),
    # Ours: the request never got an answer from KMS.
    "NetworkError": (CKR.DEVICE_ERROR, 22, "cannot connect to the KMS endpoint"),
    "TlsError": (CKR.DEVICE_ERROR, 23, "TLS to the KMS endpoint failed (CA bundle?)"),
    "Timeout": (CKR.DEVICE_ERROR, 24, "no answer from KMS within the deadline"),
    "NoCredentials": (CKR.DEVICE_ERROR, 25, "no usable AWS credentials"),
    "NoRegion": (CKR.DEVICE_ERROR, 26, "no AWS region configured"),
    "ProfileNotFound": (CKR.DEVICE_ERROR, 27, "the AWS profile does not exist"),
    "Reentrant": (CKR.FUNCTION_FAILED, 28, "KMS call from inside a KMS call (TLS re-entering us?)"),
    "Cancelled": (CKR.FUNCTION_FAILED, 29, "call cut short by C_Finalize or interpreter exit"),
}

UNKNOWN_RV = CKR.FUNCTION_FAILED
UNKNOWN_DEVICE_ERROR = 999  # a KMS code not in the table


def _http_status(code: str) -> bool:
    return len(code) == 3 and code.isdigit()


def rv_for(code: str) -> CKR:
    """The CK_RV for a KMS error code: the table, then 5xx-like codes, then FUNCTION_FAILED."""
    row = ERROR_TABLE.get(code)
    if row is not None:
        return row[0]
    if _http_status(code) and code.startswith("5"):  # bare HTTP status: a proxy or load balancer
        return CKR.DEVICE_ERROR
    return UNKNOWN_RV


def device_error_for(code: str) -> int:
    """The ulDeviceError number of a KMS error code (the table's second column)."""
    row = ERROR_TABLE.get(code)
    if row is not None:
        return row[1]
    if _http_status(code):
        return int(code)
    return UNKNOWN_DEVICE_ERROR


# Failures that a user fixes in their setup, not in their data: logged at ERROR with a hint.
_SETUP_HINTS = {
    "NoCredentials": "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "or configure a profile (an nginx worker needs them passed with `env`)",
    "NoRegion": "set region in the config, or AWS_REGION / AWS_DEFAULT_REGION",
    "ProfileNotFound": "check the profile name and ~/.aws/config",
    "TlsError": "check ca_bundle in the config (AWS_CA_BUNDLE) and the endpoint's certificate",
}


class KmsError(PKCS11Error):
    """A KMS call failed; `rv` is what the PKCS#11 function that needed it returns.

    A PKCS11Error, so a core path that does not catch it still returns the right CK_RV.
    """

    def __init__(
        self,
        code: str,
        operation: str,
        key: str | None = None,
        request_id: str | None = None,
        message: str = "",
    ) -> None:
        self.code = code
        self.operation = operation
        self.key = key
        self.request_id = request_id
        self.message = message
        where = f" {key}" if key else ""
        detail = f": {message}" if message else ""
        super().__init__(rv_for(code), f"KMS {operation}{where}: {code}{detail}")
        self.device_error = device_error_for(code)  # for ulDeviceError (ERROR_TABLE)

    def __reduce__(self) -> tuple[type[KmsError], tuple[str, str, str | None, str | None, str]]:
        return KmsError, (self.code, self.operation, self.key, self.request_id, self.message)

    def log(self) -> None:
        """The one log line of a failure: operation, key, code, request id; never data."""
        hint = _SETUP_HINTS.get(self.code)
        logger.log(
            logging.ERROR if hint else logging.WARNING,
            "KMS %s failed: key=%s code=%s request_id=%s rv=%s%s%s",
            self.operation,
            self.key or "-",
            self.code,
            self.request_id or "-",
            self.rv.name,
            f": {self.message}" if self.message else "",
            f" ({hint})" if hint else "",
        )


def failure(
    code: str,
    operation: str,
    key: str | None = None,
    request_id: str | None = None,
    message: str = "",
) -> KmsError:
    """A KmsError that has already logged its line: `raise failure(...)`."""
    error = KmsError(code, operation, key, request_id, message)
    error.log()
    return error
