"""A minimal PKCS#11 client (ctypes): find a private key by RFC 7512 URI in any module, and sign.

The subcommands that sign (`tsa`) go through a PKCS#11 module exactly as openssl or pkcs11-tool
would: C_GetFunctionList, C_Initialize, find the key, C_SignInit/C_Sign. With this package's
module the signature is made by KMS; any other module (an HSM, p11-kit's proxy) works too.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, Structure, byref, c_char, c_ubyte, c_ulong, c_void_p
from dataclasses import dataclass

from ..ck import CKR
from .uri import Pkcs11Uri

CK_RV = c_ulong
CKO_PRIVATE_KEY = 3
CKA_CLASS, CKA_KEY_TYPE, CKA_LABEL, CKA_ID = 0x0, 0x100, 0x3, 0x102
CKA_PUBLIC_KEY_INFO = 0x129
CKK_RSA, CKK_EC = 0x0, 0x3
CKF_OS_LOCKING_OK, CKF_SERIAL_SESSION, CKU_USER = 0x2, 0x4, 1
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKR_USER_ALREADY_LOGGED_IN = 0x100
CK_UNAVAILABLE_INFORMATION = c_ulong(-1).value

# CK_FUNCTION_LIST order (PKCS#11 2.40 §5.2), up to C_Sign: all this client calls.
_FUNCTIONS = (
    "C_Initialize C_Finalize C_GetInfo C_GetFunctionList C_GetSlotList C_GetSlotInfo "
    "C_GetTokenInfo C_GetMechanismList C_GetMechanismInfo C_InitToken C_InitPIN C_SetPIN "
    "C_OpenSession C_CloseSession C_CloseAllSessions C_GetSessionInfo C_GetOperationState "
    "C_SetOperationState C_Login C_Logout C_CreateObject C_CopyObject C_DestroyObject "
    "C_GetObjectSize C_GetAttributeValue C_SetAttributeValue C_FindObjectsInit C_FindObjects "
    "C_FindObjectsFinal C_EncryptInit C_Encrypt C_EncryptUpdate C_EncryptFinal C_DecryptInit "
    "C_Decrypt C_DecryptUpdate C_DecryptFinal C_DigestInit C_Digest C_DigestUpdate C_DigestKey "
    "C_DigestFinal C_SignInit C_Sign"
).split()


class CK_VERSION(Structure):
    _fields_ = [("major", c_ubyte), ("minor", c_ubyte)]


class CK_FUNCTION_LIST(Structure):
    _fields_ = [("version", CK_VERSION)] + [(name, c_void_p) for name in _FUNCTIONS]


class CK_C_INITIALIZE_ARGS(Structure):
    _fields_ = [("CreateMutex", c_void_p), ("DestroyMutex", c_void_p), ("LockMutex", c_void_p),
                ("UnlockMutex", c_void_p), ("flags", c_ulong), ("pReserved", c_void_p)]


class CK_TOKEN_INFO(Structure):
    _fields_ = [("label", c_char * 32), ("manufacturerID", c_char * 32), ("model", c_char * 16),
                ("serialNumber", c_char * 16), ("flags", c_ulong)] + [
        (name, c_ulong) for name in (
            "ulMaxSessionCount", "ulSessionCount", "ulMaxRwSessionCount", "ulRwSessionCount",
            "ulMaxPinLen", "ulMinPinLen", "ulTotalPublicMemory", "ulFreePublicMemory",
            "ulTotalPrivateMemory", "ulFreePrivateMemory")] + [
        ("hardwareVersion", CK_VERSION), ("firmwareVersion", CK_VERSION), ("utcTime", c_char * 16)]


class CK_ATTRIBUTE(Structure):
    _fields_ = [("type", c_ulong), ("pValue", c_void_p), ("ulValueLen", c_ulong)]


class CK_MECHANISM(Structure):
    _fields_ = [("mechanism", c_ulong), ("pParameter", c_void_p), ("ulParameterLen", c_ulong)]


_P = POINTER
_SIGNATURES = {
    "C_Initialize": (c_void_p,),
    "C_Finalize": (c_void_p,),
    "C_GetSlotList": (c_ubyte, _P(c_ulong), _P(c_ulong)),
    "C_GetTokenInfo": (c_ulong, _P(CK_TOKEN_INFO)),
    "C_OpenSession": (c_ulong, c_ulong, c_void_p, c_void_p, _P(c_ulong)),
    "C_CloseSession": (c_ulong,),
    "C_Login": (c_ulong, c_ulong, c_void_p, c_ulong),
    "C_GetAttributeValue": (c_ulong, c_ulong, _P(CK_ATTRIBUTE), c_ulong),
    "C_FindObjectsInit": (c_ulong, _P(CK_ATTRIBUTE), c_ulong),
    "C_FindObjects": (c_ulong, _P(c_ulong), c_ulong, _P(c_ulong)),
    "C_FindObjectsFinal": (c_ulong,),
    "C_SignInit": (c_ulong, _P(CK_MECHANISM), c_ulong),
    "C_Sign": (c_ulong, c_void_p, c_ulong, c_void_p, _P(c_ulong)),
}


class Pkcs11Failure(Exception):
    """A C_* call returned an error; `rv` is its CK_RV."""

    def __init__(self, function: str, rv: int) -> None:
        try:
            name = f"CKR_{CKR(rv).name}"
        except ValueError:
            name = f"{rv:#x}"
        super().__init__(f"{function} returned {name}")
        self.function, self.rv = function, rv


def _ulong(raw: bytes) -> int:
    """A CK_ULONG attribute value (native size and byte order)."""
    return c_ulong.from_buffer_copy(raw).value if len(raw) == ctypes.sizeof(c_ulong) else -1


@dataclass(frozen=True)
class FoundKey:
    slot: int
    handle: int
    key_type: int  # CKK_RSA, CKK_EC, ...
    label: str
    ckid: bytes
    token_label: str
    spki: bytes | None  # CKA_PUBLIC_KEY_INFO when the module offers it


class Pkcs11Module:
    """One loaded module; C_Initialize on open, C_Finalize on close."""

    def __init__(self, path: str, config: str | None = None) -> None:
        self.path = path
        self._lib = ctypes.CDLL(path)
        get_list = self._lib.C_GetFunctionList
        get_list.restype = CK_RV
        get_list.argtypes = (_P(_P(CK_FUNCTION_LIST)),)
        table = _P(CK_FUNCTION_LIST)()
        self._check("C_GetFunctionList", get_list(byref(table)))
        self._fn = {
            name: ctypes.CFUNCTYPE(CK_RV, *args)(getattr(table.contents, name))
            for name, args in _SIGNATURES.items()
        }
        # pReserved: this package's module takes a config path there (an extension); other
        # modules get NULL.
        self._reserved = ctypes.create_string_buffer(config.encode()) if config else None
        init = CK_C_INITIALIZE_ARGS(flags=CKF_OS_LOCKING_OK,
                                    pReserved=ctypes.cast(self._reserved, c_void_p)
                                    if self._reserved else None)
        rv = self._fn["C_Initialize"](ctypes.cast(byref(init), c_void_p))
        if rv != CKR_CRYPTOKI_ALREADY_INITIALIZED:
            self._check("C_Initialize", rv)

    def _check(self, function: str, rv: int) -> None:
        if rv != 0:
            raise Pkcs11Failure(function, rv)

    def call(self, function: str, *args: object) -> None:
        self._check(function, self._fn[function](*args))

    def close(self) -> None:
        self._fn["C_Finalize"](None)

    # -- tokens and objects ---------------------------------------------------------------------

    def slots(self) -> list[int]:
        count = c_ulong(0)
        self.call("C_GetSlotList", 1, None, byref(count))
        ids = (c_ulong * max(count.value, 1))()
        self.call("C_GetSlotList", 1, ids, byref(count))
        return list(ids[: count.value])

    def token_info(self, slot: int) -> dict[str, str]:
        info = CK_TOKEN_INFO()
        self.call("C_GetTokenInfo", slot, byref(info))

        def text(raw: bytes) -> str:
            return raw.decode("utf-8", "replace").rstrip(" \0")

        return {"token": text(info.label), "manufacturer": text(info.manufacturerID),
                "model": text(info.model), "serial": text(info.serialNumber)}

    def open_session(self, slot: int) -> int:
        session = c_ulong(0)
        self.call("C_OpenSession", slot, CKF_SERIAL_SESSION, None, None, byref(session))
        return session.value

    def login(self, session: int, pin: str) -> None:
        raw = pin.encode()
        rv = self._fn["C_Login"](session, CKU_USER, ctypes.c_char_p(raw), len(raw))
        if rv != CKR_USER_ALREADY_LOGGED_IN:
            self._check("C_Login", rv)

    def attribute(self, session: int, handle: int, kind: int) -> bytes | None:
        template = CK_ATTRIBUTE(kind, None, 0)
        rv = self._fn["C_GetAttributeValue"](session, handle, byref(template), 1)
        if rv != 0 or template.ulValueLen == CK_UNAVAILABLE_INFORMATION:
            return None
        buffer = ctypes.create_string_buffer(template.ulValueLen or 1)
        template.pValue = ctypes.cast(buffer, c_void_p)
        self.call("C_GetAttributeValue", session, handle, byref(template), 1)
        return buffer.raw[: template.ulValueLen]

    def find_private_keys(self, session: int, label: str | None, ckid: bytes | None) -> list[int]:
        values: list[tuple[int, bytes]] = [(CKA_CLASS, bytes(c_ulong(CKO_PRIVATE_KEY)))]
        if label is not None:
            values.append((CKA_LABEL, label.encode()))
        if ckid is not None:
            values.append((CKA_ID, ckid))
        buffers = [ctypes.create_string_buffer(v, len(v) or 1) for _, v in values]
        template = (CK_ATTRIBUTE * len(values))(*[
            CK_ATTRIBUTE(kind, ctypes.cast(buf, c_void_p), len(v))
            for (kind, v), buf in zip(values, buffers, strict=True)])
        self.call("C_FindObjectsInit", session, template, len(values))
        found: list[int] = []
        try:
            handles, count = (c_ulong * 16)(), c_ulong(0)
            while True:
                self.call("C_FindObjects", session, handles, 16, byref(count))
                if not count.value:
                    return found
                found += handles[: count.value]
        finally:
            self._fn["C_FindObjectsFinal"](session)

    def find_key(self, uri: Pkcs11Uri) -> FoundKey:
        """The one private key the URI names; LookupError says why there is not exactly one."""
        if uri.get("type") not in (None, "private"):
            raise LookupError(f"the URI names type={uri.get('type')}: a signing key is "
                              "type=private")
        pin = uri.query.get("pin-value")
        wanted_slot = uri.get("slot-id")
        matches: list[FoundKey] = []
        for slot in self.slots():
            if wanted_slot is not None and str(slot) != wanted_slot:
                continue
            info = self.token_info(slot)
            if any(uri.get(k) is not None and uri.get(k) != v for k, v in info.items()):
                continue
            session = self.open_session(slot)
            try:
                if pin is not None:
                    self.login(session, pin)
                for handle in self.find_private_keys(session, uri.get("object"), uri.ckid):
                    kind = self.attribute(session, handle, CKA_KEY_TYPE)
                    matches.append(FoundKey(
                        slot, handle, _ulong(kind) if kind else -1,
                        (self.attribute(session, handle, CKA_LABEL) or b"").decode("utf-8",
                                                                                   "replace"),
                        self.attribute(session, handle, CKA_ID) or b"", info["token"],
                        self.attribute(session, handle, CKA_PUBLIC_KEY_INFO) or None))
            finally:
                self._fn["C_CloseSession"](session)
        if not matches:
            raise LookupError("no private key matches the URI (`pkcs11-kms keys` lists them)")
        if len(matches) > 1:
            where = ", ".join(f"{m.token_label}/{m.label}" for m in matches)
            raise LookupError(f"{len(matches)} private keys match the URI ({where}): add token= "
                              "or id= to name one")
        return matches[0]

    def sign(self, key: FoundKey, mechanism: int, data: bytes, pin: str | None = None) -> bytes:
        """One C_SignInit/C_Sign in a session of its own (callers may run in several threads)."""
        session = self.open_session(key.slot)
        try:
            if pin is not None:
                self.login(session, pin)
            mech = CK_MECHANISM(mechanism, None, 0)
            self.call("C_SignInit", session, byref(mech), key.handle)
            length = c_ulong(0)
            self.call("C_Sign", session, data, len(data), None, byref(length))
            out = ctypes.create_string_buffer(length.value or 1)
            self.call("C_Sign", session, data, len(data), out, byref(length))
            return out.raw[: length.value]
        finally:
            self._fn["C_CloseSession"](session)
