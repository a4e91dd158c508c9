"""The core's edge to KMS: a KmsError becomes the PKCS11Error the function returns, with one log
line. The CK_RV is the one for a *Init or single-part call; abi/entry.py then fits it into each
function's allowed set (core/returns.py; docs/design.md, "Return codes")."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from ..ck import CKR
from ..errors import PKCS11Error
from ..kms.errors import KmsError, Meaning, meaning_of

# The KMS logger, as the line has always been: a user who filters on it still sees every failure.
log = logging.getLogger("pkcs11_kms.kms")

RV: dict[Meaning, CKR] = {
    # The key the handle named is gone: PKCS#11's word for a handle with nothing behind it.
    Meaning.NO_SUCH_KEY: CKR.KEY_HANDLE_INVALID,
    # The spec's "key function not permitted": disabled, pending deletion, wrong usage, or IAM
    # refuses this principal. Not FUNCTION_REJECTED: that one means a user declined a signature
    # request; not USER_NOT_LOGGED_IN: a PIN cannot fix it.
    Meaning.KEY_REFUSED: CKR.KEY_FUNCTION_NOT_PERMITTED,
    # The data is wrong for the key: the spec's data/ciphertext/signature return values.
    Meaning.BAD_CIPHERTEXT: CKR.ENCRYPTED_DATA_INVALID,
    Meaning.BAD_SIGNATURE: CKR.SIGNATURE_INVALID,
    # The core checks lengths first, so what KMS still refuses is a length the token cannot take.
    Meaning.OUT_OF_RANGE: CKR.DATA_LEN_RANGE,
    Meaning.UNSUPPORTED: CKR.FUNCTION_NOT_SUPPORTED,
    Meaning.UNAVAILABLE: CKR.DEVICE_ERROR,
    Meaning.CUT_SHORT: CKR.FUNCTION_FAILED,
    Meaning.UNKNOWN: CKR.FUNCTION_FAILED,
}


def rv_for(error: KmsError | str) -> CKR:
    """The CK_RV of a KMS failure, or of a KMS error code."""
    return RV[error.meaning if isinstance(error, KmsError) else meaning_of(error)]


def failure(error: KmsError) -> PKCS11Error:
    """The PKCS11Error of a failed KMS call, after its one log line: operation, key, code,
    request id; never data. A failure of the user's setup is an ERROR with a hint."""
    rv = rv_for(error)
    log.log(
        logging.ERROR if error.hint else logging.WARNING,
        "KMS %s failed: key=%s code=%s request_id=%s rv=%s%s%s",
        error.operation,
        error.key or "-",
        error.code,
        error.request_id or "-",
        rv.name,
        f": {error.message}" if error.message else "",
        f" ({error.hint})" if error.hint else "",
    )
    return PKCS11Error(rv, str(error), error.device_error)


@contextmanager
def calling_kms() -> Iterator[None]:
    """Around core code that calls KMS: a KmsError leaves as its PKCS11Error (`failure`)."""
    try:
        yield
    except KmsError as e:
        raise failure(e) from e

