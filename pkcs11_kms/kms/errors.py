"""KmsError: a failed KMS call in KMS's terms: its error code, what the code means, its number."""

from __future__ import annotations

import enum


class Meaning(enum.Enum):
    """What a KMS error code says about the call. The core gives each meaning its CK_RV
    (core/kms_errors.py); the backend needs only KEY_REFUSALS."""

    NO_SUCH_KEY = "the key or alias does not exist"
    KEY_REFUSED = "the key exists but may not do this, now or ever"
    BAD_CIPHERTEXT = "the ciphertext is not for this key and algorithm"
    BAD_SIGNATURE = "the signature does not verify"
    OUT_OF_RANGE = "a request value is outside what KMS takes"
    UNSUPPORTED = "KMS does not support this on this key"
    UNAVAILABLE = "KMS, or the way to it, is failing: a later call may work"
    CUT_SHORT = "our own call ended before KMS answered"
    UNKNOWN = "a code this table does not know"


# A refusal of one key: the token leaves that key out. Any other failure (network, credentials,
# throttling, timeout) is the device's (docs/design.md, "Reading the keys").
KEY_REFUSALS = frozenset({Meaning.NO_SUCH_KEY, Meaning.KEY_REFUSED, Meaning.UNSUPPORTED})

# KMS error code (or one of ours, for failures that never reached KMS) -> (what it means, device
# error number, why). KMS codes are the `__type` of its JSON errors; ours have no "Exception"
# suffix. The number is what C_GetSessionInfo reports in ulDeviceError after a call failed on KMS
# (docs/design.md, "Device errors"): stable, never reused; bare HTTP statuses report themselves
# (500-599), an unknown code UNKNOWN_DEVICE_ERROR.
ERROR_TABLE: dict[str, tuple[Meaning, int, str]] = {
    "NotFoundException": (Meaning.NO_SUCH_KEY, 1, "no such key or alias"),
    "InvalidArnException": (Meaning.NO_SUCH_KEY, 2, "the key id is not a well-formed ARN"),
    "DisabledException": (Meaning.KEY_REFUSED, 3, "the key is disabled"),
    "KMSInvalidStateException": (Meaning.KEY_REFUSED, 4, "the key is pending deletion or import"),
    "InvalidKeyUsageException": (
        Meaning.KEY_REFUSED, 5, "key usage or key spec does not allow this operation or algorithm"),
    "AccessDeniedException": (Meaning.KEY_REFUSED, 6, "IAM or key policy denies this operation"),
    "InvalidCiphertextException": (Meaning.BAD_CIPHERTEXT, 7, "ciphertext is not valid"),
    "IncorrectKeyException": (Meaning.BAD_CIPHERTEXT, 8, "ciphertext was made under another key"),
    "KMSInvalidSignatureException": (Meaning.BAD_SIGNATURE, 9, "signature does not verify"),
    # KMS (or botocore's check of the API's ranges) rejects a value: a digest that is not the
    # algorithm's hash length, a message over 4096 bytes, a random count outside 1..1024.
    "ValidationException": (Meaning.OUT_OF_RANGE, 10, "a request value is out of KMS's range"),
    "UnsupportedOperationException": (
        Meaning.UNSUPPORTED, 11, "KMS does not support this on this key"),
    # The device is there but failing: the consumer may retry later.
    "KeyUnavailableException": (Meaning.UNAVAILABLE, 12, "key material temporarily unavailable"),
    "ThrottlingException": (Meaning.UNAVAILABLE, 13, "throttled, still after botocore's retries"),
    "LimitExceededException": (Meaning.UNAVAILABLE, 14, "a KMS quota is exceeded"),
    "DependencyTimeoutException": (Meaning.UNAVAILABLE, 15, "KMS timed out internally"),
    "KMSInternalException": (Meaning.UNAVAILABLE, 16, "KMS internal error"),
    "InternalFailure": (Meaning.UNAVAILABLE, 17, "AWS internal error"),
    "ServiceUnavailable": (Meaning.UNAVAILABLE, 18, "AWS service unavailable"),
    # The credentials are refused: the device cannot be reached as anyone (log says which).
    "UnrecognizedClientException": (Meaning.UNAVAILABLE, 19, "unknown access key id"),
    "InvalidSignatureException": (
        Meaning.UNAVAILABLE, 20, "request signature refused (secret or clock)"),
    "ExpiredTokenException": (Meaning.UNAVAILABLE, 21, "session token expired"),
    # Ours: the request never got an answer from KMS.
    "NetworkError": (Meaning.UNAVAILABLE, 22, "cannot connect to the KMS endpoint"),
    "TlsError": (Meaning.UNAVAILABLE, 23, "TLS to the KMS endpoint failed (CA bundle?)"),
    "Timeout": (Meaning.UNAVAILABLE, 24, "no answer from KMS within the deadline"),
    "NoCredentials": (Meaning.UNAVAILABLE, 25, "no usable AWS credentials"),
    "NoRegion": (Meaning.UNAVAILABLE, 26, "no AWS region configured"),
    "ProfileNotFound": (Meaning.UNAVAILABLE, 27, "the AWS profile does not exist"),
    "Reentrant": (Meaning.CUT_SHORT, 28, "KMS call from inside a KMS call (TLS re-entering us?)"),
    "Cancelled": (Meaning.CUT_SHORT, 29, "call cut short by C_Finalize or interpreter exit"),
}

UNKNOWN_DEVICE_ERROR = 999  # a KMS code not in the table


def _http_status(code: str) -> bool:
    return len(code) == 3 and code.isdigit()


def meaning_of(code: str) -> Meaning:
    """What a KMS error code means: the table, then 5xx-like codes (a proxy or load balancer)."""
    row = ERROR_TABLE.get(code)
    if row is not None:
        return row[0]
    if _http_status(code) and code.startswith("5"):
        return Meaning.UNAVAILABLE
    return Meaning.UNKNOWN


def device_error_for(code: str) -> int:
    """The ulDeviceError number of a KMS error code (the table's second column)."""
    row = ERROR_TABLE.get(code)
    if row is not None:
        return row[1]
    if _http_status(code):
        return int(code)
    return UNKNOWN_DEVICE_ERROR


# Failures that a user fixes in their setup, not in their data: the log line gives the hint.
_SETUP_HINTS = {
    "NoCredentials": "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "or configure a profile (an nginx worker needs them passed with `env`)",
    "NoRegion": "set region in the config, or AWS_REGION / AWS_DEFAULT_REGION",
    "ProfileNotFound": "check the profile name and ~/.aws/config",
    "TlsError": "check ca_bundle in the config (AWS_CA_BUNDLE) and the endpoint's certificate",
}


class KmsError(Exception):
    """A KMS call failed. The backend raises it and logs nothing: whoever handles it says what
    it means there (the core: a CK_RV and one log line, core/kms_errors.py; the doctor: advice)."""

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
        super().__init__(f"KMS {operation}{where}: {code}{detail}")
        self.meaning = meaning_of(code)
        self.device_error = device_error_for(code)  # for ulDeviceError (ERROR_TABLE)
        self.hint = _SETUP_HINTS.get(code)  # set for a failure of the user's setup, not data

    def __reduce__(self) -> tuple[type[KmsError], tuple[str, str, str | None, str | None, str]]:
        return KmsError, (self.code, self.operation, self.key, self.request_id, self.message)
