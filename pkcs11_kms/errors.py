"""PKCS11Error: a failure that carries the CK_RV the abi layer returns for it."""

from __future__ import annotations

from .ck import CKR


class PKCS11Error(Exception):
    """Raised by the core with the return value the calling C_* function must give, and for a
    failure on KMS the number C_GetSessionInfo reports in ulDeviceError (kms/errors.py)."""

    def __init__(self, rv: CKR, why: str = "", device_error: int = 0) -> None:
        super().__init__(f"{CKR(rv).name}: {why}" if why else CKR(rv).name)
        self.rv = CKR(rv)
        self.why = why
        self.device_error = device_error


class ConfigError(PKCS11Error):
    """The configuration cannot be used: C_Initialize fails with CKR_FUNCTION_FAILED."""

    def __init__(self, path: str | None, problem: str) -> None:
        where = path or "<defaults>"
        super().__init__(CKR.FUNCTION_FAILED, f"config {where}: {problem}")
        self.path = path
        self.problem = problem
