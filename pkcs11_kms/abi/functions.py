"""C_* functions of the token core: each unpacks its pointers, calls the core, packs the results."""

from __future__ import annotations

from _kms_pkcs11 import ffi, lib

from ..ck import CK_EFFECTIVELY_INFINITE, CK_UNAVAILABLE_INFORMATION, CKR
from ..core import access, module, session, slots
from ..errors import PKCS11Error
from .marshal import (
    NULL,
    fill_attributes,
    read_template,
    require,
    set_text,
    set_version,
    write_ulongs,
)

# ---- General purpose (§5.4) ----

_RESERVED_MAX = 4096  # a config file path


def C_Initialize(pInitArgs):  # type: ignore[no-untyped-def]
    if pInitArgs == NULL:
        return module.initialize(module.InitArgs())
    args = ffi.cast("CK_C_INITIALIZE_ARGS *", pInitArgs)
    callbacks = sum(
        f != NULL for f in (args.CreateMutex, args.DestroyMutex, args.LockMutex, args.UnlockMutex)
    )
    reserved = None
    if args.pReserved != NULL:  # libp11 and pkcs11-provider pass a config string; NULL per spec
        buffer = ffi.new("char[]", _RESERVED_MAX)
        length = lib.kms_read_c_string(args.pReserved, buffer, _RESERVED_MAX)
        if length < 0:
            raise PKCS11Error(CKR.ARGUMENTS_BAD, "pReserved is neither NULL nor a string")
        reserved = ffi.string(buffer, length).decode("utf-8", "replace")
    module.initialize(module.InitArgs(int(args.flags), callbacks, reserved))


def C_Finalize(pReserved):  # type: ignore[no-untyped-def]
    if pReserved != NULL:
        return CKR.ARGUMENTS_BAD
    module.finalize()


def C_GetInfo(pInfo):  # type: ignore[no-untyped-def]
    info = module.get_info()
    require(pInfo)
    set_version(pInfo.cryptokiVersion, info.cryptoki_version)
    set_text(pInfo.manufacturerID, info.manufacturer, 32)
    pInfo.flags = info.flags
    set_text(pInfo.libraryDescription, info.description, 32)
    set_version(pInfo.libraryVersion, info.library_version)


# ---- Slots and tokens (§5.5) ----


def C_GetSlotList(tokenPresent, pSlotList, pulCount):  # type: ignore[no-untyped-def]
    require(pulCount)
    write_ulongs(slots.get_slot_list(bool(tokenPresent)), pSlotList, pulCount)


def C_GetSlotInfo(slotID, pInfo):  # type: ignore[no-untyped-def]
    info = slots.get_slot_info(slotID)
    require(pInfo)
    set_text(pInfo.slotDescription, info.description, 64)
    set_text(pInfo.manufacturerID, info.manufacturer, 32)
    pInfo.flags = info.flags
    set_version(pInfo.hardwareVersion, info.hardware_version)
    set_version(pInfo.firmwareVersion, info.firmware_version)


def C_GetTokenInfo(slotID, pInfo):  # type: ignore[no-untyped-def]
    info = slots.get_token_info(slotID)
    require(pInfo)
    set_text(pInfo.label, info.label, 32)
    set_text(pInfo.manufacturerID, info.manufacturer, 32)
    set_text(pInfo.model, info.model, 16)
    set_text(pInfo.serialNumber, info.serial, 16)
    pInfo.flags = info.flags
    pInfo.ulMaxSessionCount = CK_EFFECTIVELY_INFINITE
    pInfo.ulSessionCount = info.session_count
    pInfo.ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE
    pInfo.ulRwSessionCount = info.rw_session_count
    pInfo.ulMaxPinLen = info.max_pin_len
    pInfo.ulMinPinLen = info.min_pin_len
    for name in ("ulTotalPublicMemory", "ulFreePublicMemory", "ulTotalPrivateMemory",
                 "ulFreePrivateMemory"):
        setattr(pInfo, name, CK_UNAVAILABLE_INFORMATION)
    set_version(pInfo.hardwareVersion, info.hardware_version)
    set_version(pInfo.firmwareVersion, info.firmware_version)
    set_text(pInfo.utcTime, "", 16)  # no clock on the token


def C_GetMechanismList(slotID, pMechanismList, pulCount):  # type: ignore[no-untyped-def]
    require(pulCount)
    write_ulongs(slots.get_mechanism_list(slotID), pMechanismList, pulCount)


def C_GetMechanismInfo(slotID, type, pInfo):  # type: ignore[no-untyped-def]  # noqa: A002
    low, high, flags = slots.get_mechanism_info(slotID, type)
    require(pInfo)
    pInfo.ulMinKeySize, pInfo.ulMaxKeySize, pInfo.flags = low, high, flags


# ---- Sessions (§5.6) ----


def C_OpenSession(slotID, flags, pApplication, Notify, phSession):  # type: ignore[no-untyped-def]
    require(phSession)
    phSession[0] = session.open_session(slotID, flags)


def C_CloseSession(hSession):  # type: ignore[no-untyped-def]
    session.close_session(hSession)


def C_CloseAllSessions(slotID):  # type: ignore[no-untyped-def]
    session.close_all_sessions(slotID)


def C_GetSessionInfo(hSession, pInfo):  # type: ignore[no-untyped-def]
    info = session.get_session_info(hSession)
    require(pInfo)
    pInfo.slotID, pInfo.state, pInfo.flags, pInfo.ulDeviceError = (
        info.slot_id, info.state, info.flags, info.device_error)


def C_Login(hSession, userType, pPin, ulPinLen):  # type: ignore[no-untyped-def]
    # Any PIN is accepted (KMS authorises with IAM): the PIN is never read, so never logged.
    session.login(hSession, userType)


def C_LoginUser(hSession, userType, pPin, ulPinLen, pUsername, ulUsernameLen):  # type: ignore[no-untyped-def]
    C_Login(hSession, userType, pPin, ulPinLen)


def C_Logout(hSession):  # type: ignore[no-untyped-def]
    session.logout(hSession)


# ---- Objects (§5.7) ----


def C_FindObjectsInit(hSession, pTemplate, ulCount):  # type: ignore[no-untyped-def]
    access.find_objects_init(hSession, read_template(pTemplate, ulCount))


def C_FindObjects(hSession, phObject, ulMaxObjectCount, pulObjectCount):  # type: ignore[no-untyped-def]
    require(pulObjectCount)
    if ulMaxObjectCount:
        require(phObject)
    found = access.find_objects(hSession, ulMaxObjectCount)
    for i, h in enumerate(found):
        phObject[i] = h
    pulObjectCount[0] = len(found)


def C_FindObjectsFinal(hSession):  # type: ignore[no-untyped-def]
    access.find_objects_final(hSession)


def C_GetAttributeValue(hSession, hObject, pTemplate, ulCount):  # type: ignore[no-untyped-def]
    if ulCount:
        require(pTemplate)
    types = [int(pTemplate[i].type) for i in range(ulCount)]
    return fill_attributes(pTemplate, ulCount, access.attribute_values(hSession, hObject, types))


def C_CopyObject(hSession, hObject, pTemplate, ulCount, phNewObject):  # type: ignore[no-untyped-def]
    require(phNewObject)
    phNewObject[0] = access.copy_object(hSession, hObject, read_template(pTemplate, ulCount))


def C_DestroyObject(hSession, hObject):  # type: ignore[no-untyped-def]
    access.destroy_object(hSession, hObject)


def C_GetFunctionStatus(hSession):  # type: ignore[no-untyped-def]
    session.session(hSession)
    return CKR.FUNCTION_NOT_PARALLEL  # §5.20: the legacy parallel-function calls


def C_CancelFunction(hSession):  # type: ignore[no-untyped-def]
    session.session(hSession)
    return CKR.FUNCTION_NOT_PARALLEL


def C_GetObjectSize(hSession, hObject, pulSize):  # type: ignore[no-untyped-def]
    access.find_object(hSession, hObject)
    require(pulSize)
    pulSize[0] = CK_UNAVAILABLE_INFORMATION


__all__ = [name for name in dir() if name.startswith("C_")]
