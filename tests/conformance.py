"""Shared pieces of the PKCS#11 conformance tests (tests/test_conformance_*.py).

The tests call the real library in this process through the raw cffi client (p11raw), so that
NULL pointers, buffer sizes and the exact CK_RV are theirs to choose, against the emulator's
acceptance token: RSA-2048 "web-tls" (sign), P-256 (sign, labelled with its key id) and RSA-3072
"decrypt". Sections are those of the PKCS#11 v3.0 base specification.

Where the module differs from the specification on purpose, a test asserts the module's behaviour
and its docstring says "Deviation"; `DEVIATIONS` below lists them with the reason.
"""

from __future__ import annotations

import os
import re

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import p11raw
from pkcs11_kms.ck import CKA, CKF, CKK, CKO, CKR

# Every function of the v3.0 function list in table order (cdefs/pkcs11_functions.h), and the
# first 68 of them, which make the v2.40 list (§5.4.4).
PROTOTYPES = [
    re.match(r"^CK_RV (C_\w+)\(", line).group(1)  # type: ignore[union-attr]
    for line in (p11raw.CDEFS / "pkcs11_functions.h").read_text().splitlines()
    if line.startswith("CK_RV C_")
]
V2_FUNCTIONS = PROTOTYPES[:PROTOTYPES.index("C_WaitForSlotEvent") + 1]
BEFORE_INIT = {"C_Initialize", "C_GetFunctionList", "C_GetInterfaceList", "C_GetInterface"}
# The functions without a session handle (§5.1.2); every other one takes one.
SESSIONLESS = BEFORE_INIT | {
    "C_Finalize", "C_GetInfo", "C_GetSlotList", "C_GetSlotInfo", "C_GetTokenInfo",
    "C_WaitForSlotEvent", "C_GetMechanismList", "C_GetMechanismInfo", "C_InitToken",
    "C_OpenSession", "C_CloseAllSessions",
}

# The functions the module leaves as the stub §5.1.6 asks for (CKR_FUNCTION_NOT_SUPPORTED).
UNSUPPORTED = [
    "C_InitToken", "C_InitPIN", "C_SetPIN", "C_WaitForSlotEvent",
    "C_GetOperationState", "C_SetOperationState", "C_SessionCancel",
    "C_CreateObject", "C_SetAttributeValue",
    "C_SignRecoverInit", "C_SignRecover", "C_VerifyRecoverInit", "C_VerifyRecover",
    "C_DigestEncryptUpdate", "C_DecryptDigestUpdate", "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_GenerateKey", "C_GenerateKeyPair", "C_WrapKey", "C_UnwrapKey",
    *[name for name in PROTOTYPES if "Message" in name],
]

# Where the module differs from PKCS#11, with the reason (that section of docs/mechanisms.md).
DEVIATIONS = {
    "any PIN": "C_Login accepts any PIN, even none: KMS authorises every call with IAM",
    "no SO": "there is no security officer: CKU_SO gets CKR_PIN_INCORRECT, "
             "C_InitToken/C_InitPIN/C_SetPIN are not supported",
    "public keys": "private keys have CKA_PRIVATE false and the token no CKF_LOGIN_REQUIRED: "
                   "consumers then never ask for a PIN that protects nothing",
    "read-only token": "read/write sessions open, but token objects are neither modifiable nor "
                       "destroyable: KMS keys change only through KMS",
    "no creation": "no C_CreateObject, key generation, wrap or unwrap; C_CopyObject and "
                   "C_DeriveKey make session objects only",
    "pReserved": "C_Initialize takes a config path in pReserved (libp11, pkcs11-provider)",
    "no slot events": "C_WaitForSlotEvent is not supported: slots and tokens never change",
    "no saved state": "C_GetOperationState/C_SetOperationState are not supported: a KMS "
                      "operation's state cannot be exported",
    "object size": "C_GetObjectSize gives CK_UNAVAILABLE_INFORMATION",
    "ECDSA digests": "CKM_ECDSA takes a 28, 32, 48 or 64-byte digest only: KMS refuses SHA-1",
}


class Client:
    """The raw library plus the few helpers every family needs."""

    def __init__(self, ffi, lib) -> None:  # type: ignore[no-untyped-def]
        self.ffi, self.lib = ffi, lib
        self._keep: list[object] = []  # buffers a template points at

    def open(self, flags: int = CKF.SERIAL_SESSION, slot: int = 0) -> int:
        h = self.ffi.new("CK_SESSION_HANDLE *")
        assert self.lib.C_OpenSession(slot, flags, self.ffi.NULL, self.ffi.NULL, h) == CKR.OK
        return int(h[0])

    def template(self, *pairs: tuple[int, object]):  # type: ignore[no-untyped-def]
        """A CK_ATTRIBUTE array: ints are CK_ULONGs, bools CK_BBOOLs, bytes as they are."""
        t = self.ffi.new("CK_ATTRIBUTE[]", max(len(pairs), 1))
        for i, (kind, value) in enumerate(pairs):
            if isinstance(value, bool):
                buf = self.ffi.new("CK_BBOOL *", value)
            elif isinstance(value, int):
                buf = self.ffi.new("CK_ULONG *", value)
            else:
                buf = self.ffi.new("char[]", value)  # type: ignore[call-overload]
            item = self.ffi.typeof(buf).item
            size = len(value) if isinstance(value, bytes) else self.ffi.sizeof(item)
            self._keep.append(buf)
            t[i].type, t[i].pValue, t[i].ulValueLen = kind, buf, size
        return t

    def find(self, session: int, *pairs: tuple[int, object]) -> list[int]:
        t = self.template(*pairs)
        assert self.lib.C_FindObjectsInit(session, t, len(pairs)) == CKR.OK
        out, n = self.ffi.new("CK_OBJECT_HANDLE[64]"), self.ffi.new("CK_ULONG *")
        assert self.lib.C_FindObjects(session, out, 64, n) == CKR.OK
        assert self.lib.C_FindObjectsFinal(session) == CKR.OK
        return [int(out[i]) for i in range(n[0])]

    def key(self, session: int, name: str, cls: int = CKO.PRIVATE_KEY) -> int:
        """"rsa" (web-tls), "ec" or "oaep" (decrypt) of the acceptance token."""
        match = {"rsa": (CKA.LABEL, b"web-tls"), "oaep": (CKA.LABEL, b"decrypt"),
                 "ec": (CKA.KEY_TYPE, CKK.EC)}[name]
        (handle,) = self.find(session, (CKA.CLASS, cls), match)
        return handle

    def mechanism(self, mechanism: int, params=None):  # type: ignore[no-untyped-def]
        m = self.ffi.new("CK_MECHANISM *")
        m.mechanism = mechanism
        if params is not None:
            m.pParameter = params
            m.ulParameterLen = self.ffi.sizeof(self.ffi.typeof(params).item)
        return m

    def zero_args(self, name: str) -> list[object]:
        """NULL for every pointer argument of a function, 0 for every number."""
        kinds = self.ffi.typeof(getattr(self.lib, name)).args
        return [self.ffi.NULL if k.kind in ("pointer", "function") else 0 for k in kinds]

    def read(self, pointer, length: int) -> bytes:  # type: ignore[no-untyped-def]
        return bytes(self.ffi.buffer(pointer, length))


@pytest.fixture(scope="module")
def p11(module_path, acceptance_config) -> Client:  # type: ignore[no-untyped-def]
    """The library initialised on the acceptance token (shared with python-pkcs11's tests, so
    initialised again the way they do)."""
    os.environ["PKCS11_KMS_CONFIG"] = acceptance_config
    pkcs11.lib(module_path).reinitialize()
    yield Client(*p11raw.load(module_path))
    os.environ.pop("PKCS11_KMS_CONFIG", None)


@pytest.fixture
def session(p11):  # type: ignore[no-untyped-def]
    """A read-only session, closed afterwards (if the test has not closed it)."""
    h = p11.open()
    yield h
    p11.lib.C_CloseSession(h)


def text(field, size: int) -> str:  # type: ignore[no-untyped-def]
    """A blank-padded CK_UTF8CHAR field (§3.1): never NUL-terminated."""
    raw = bytes(field)[:size]
    assert len(raw) == size and b"\x00" not in raw, raw
    return raw.decode("utf-8").rstrip(" ")


def verify_ecdsa(public_der: bytes, signature: bytes, data: bytes) -> None:
    """Checks a CKM_ECDSA_SHA256 signature (r || s) with cryptography."""
    half = len(signature) // 2
    der = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                               int.from_bytes(signature[half:], "big"))
    public = serialization.load_der_public_key(public_der)
    public.verify(der, data, ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg, union-attr]
