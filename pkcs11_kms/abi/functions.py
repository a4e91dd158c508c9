"""C_* functions of the token core: each unpacks its pointers, calls the core, packs the results."""

from __future__ import annotations

from _kms_pkcs11 import ffi, lib

from ..ck import CKR
from ..core import access, module, session, slots
from ..errors import PKCS11Error
from .marshal import (
    MAX_HANDLES,
    NULL,
    ULONG_SIZE,
    copy_out,
    fill_attributes,
    read_struct,
    read_template,
    read_template_array,
    require,
    set_text,
    set_version,
    write_struct,
    write_ulong,
    write_ulongs,
)

# ---- General purpose (§5.4) ----

_RESERVED_MAX = 4096  # a config file path


def C_Initialize(pInitArgs):  # type: ignore[no-untyped-def]
    if pInitArgs == NULL:
        return module.initialize(module.InitArgs())
    args = read_struct(ffi.cast("CK_C_INITIALIZE_ARGS *", pInitArgs), "CK_C_INITIALIZE_ARGS")
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
    out = ffi.new("CK_INFO *")
    set_version(out.cryptokiVersion, info.cryptoki_version)
    set_text(out.manufacturerID, info.manufacturer, 32)
    out.flags = info.flags
    set_text(out.libraryDescription, info.description, 32)
    set_version(out.libraryVersion, info.library_version)
    write_struct(pInfo, out)


# ---- Slots and tokens (§5.5) ----


def C_GetSlotList(tokenPresent, pSlotList, pulCount):  # type: ignore[no-untyped-def]
    require(pulCount)
    write_ulongs(slots.get_slot_list(bool(tokenPresent)), pSlotList, pulCount)


def C_GetSlotInfo(slotID, pInfo):  # type: ignore[no-untyped-def]
    info = slots.get_slot_info(slotID)
    out = ffi.new("CK_SLOT_INFO *")
    set_text(out.slotDescription, info.description, 64)
    set_text(out.manufacturerID, info.manufacturer, 32)
    out.flags = info.flags
    set_version(out.hardwareVersion, info.hardware_version)
    set_version(out.firmwareVersion, info.firmware_version)
    write_struct(pInfo, out)


def C_GetTokenInfo(slotID, pInfo):  # type: ignore[no-untyped-def]
    info = slots.get_token_info(slotID)
    require(pInfo)
    out = ffi.new("CK_TOKEN_INFO *")
    set_text(out.label, info.label, 32)
    set_text(out.manufacturerID, info.manufacturer, 32)
    set_text(out.model, info.model, 16)
    set_text(out.serialNumber, info.serial, 16)
    out.flags = info.flags
    out.ulMaxSessionCount = info.max_session_count
    out.ulSessionCount = info.session_count
    out.ulMaxRwSessionCount = info.max_rw_session_count
    out.ulRwSessionCount = info.rw_session_count
    out.ulMaxPinLen = info.max_pin_len
    out.ulMinPinLen = info.min_pin_len
    out.ulTotalPublicMemory = info.total_public_memory
    out.ulFreePublicMemory = info.free_public_memory
    out.ulTotalPrivateMemory = info.total_private_memory
    out.ulFreePrivateMemory = info.free_private_memory
    set_version(out.hardwareVersion, info.hardware_version)
    set_version(out.firmwareVersion, info.firmware_version)
    set_text(out.utcTime, info.utc_time, 16)
    write_struct(pInfo, out)


def C_GetMechanismList(slotID, pMechanismList, pulCount):  # type: ignore[no-untyped-def]
    require(pulCount)
    write_ulongs(slots.get_mechanism_list(slotID), pMechanismList, pulCount)


def C_GetMechanismInfo(slotID, type, pInfo):  # type: ignore[no-untyped-def]  # noqa: A002
    low, high, flags = slots.get_mechanism_info(slotID, type)
    write_struct(pInfo, ffi.new("CK_MECHANISM_INFO *", (low, high, flags)))


# ---- Sessions (§5.6) ----


def C_OpenSession(slotID, flags, pApplication, Notify, phSession):  # type: ignore[no-untyped-def]
    require(phSession)
    handle = session.open_session(slotID, flags)  # the handle is written only when it exists
    try:
        write_ulong(phSession, handle)
    except PKCS11Error:
        session.close_session(handle)
        raise


def C_CloseSession(hSession):  # type: ignore[no-untyped-def]
    session.close_session(hSession)


def C_CloseAllSessions(slotID):  # type: ignore[no-untyped-def]
    session.close_all_sessions(slotID)


def C_GetSessionInfo(hSession, pInfo):  # type: ignore[no-untyped-def]
    info = session.get_session_info(hSession)
    write_struct(pInfo, ffi.new("CK_SESSION_INFO *", (
        info.slot_id, info.state, info.flags, info.device_error)))


def C_Login(hSession, userType, pPin, ulPinLen):  # type: ignore[no-untyped-def]
    # Any PIN is accepted (KMS authorises with IAM): the PIN is never read, so never logged.
    # NULL is for a protected authentication path, and only with no length (§5.6).
    if pPin == NULL and ulPinLen:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL PIN with a length")
    session.login(hSession, userType)


def C_LoginUser(hSession, userType, pPin, ulPinLen, pUsername, ulUsernameLen):  # type: ignore[no-untyped-def]
    if pUsername == NULL and ulUsernameLen:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL user name with a length")
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

    def deliver(found: list[int]) -> None:
        if found:
            copy_out(phObject, ffi.new("CK_OBJECT_HANDLE[]", found), len(found) * ULONG_SIZE)
        write_ulong(pulObjectCount, len(found))

    access.find_objects(hSession, min(ulMaxObjectCount, MAX_HANDLES), deliver)


def C_FindObjectsFinal(hSession):  # type: ignore[no-untyped-def]
    access.find_objects_final(hSession)


def C_GetAttributeValue(hSession, hObject, pTemplate, ulCount):  # type: ignore[no-untyped-def]
    if ulCount == 0:
        access.attribute_values(hSession, hObject, [])
        return None
    template = read_template_array(pTemplate, ulCount)
    types = [int(a.type) for a in template]
    return fill_attributes(pTemplate, template, access.attribute_values(hSession, hObject, types))


def C_CopyObject(hSession, hObject, pTemplate, ulCount, phNewObject):  # type: ignore[no-untyped-def]
    require(phNewObject)
    handle = access.copy_object(hSession, hObject, read_template(pTemplate, ulCount))
    try:
        write_ulong(phNewObject, handle)
    except PKCS11Error:
        access.discard_copy(hSession, handle)  # no copy the host cannot know of
        raise


def C_DestroyObject(hSession, hObject):  # type: ignore[no-untyped-def]
    access.destroy_object(hSession, hObject)


def C_GetFunctionStatus(hSession):  # type: ignore[no-untyped-def]
    session.session(hSession)
    return CKR.FUNCTION_NOT_PARALLEL  # §5.20: the legacy parallel-function calls


def C_CancelFunction(hSession):  # type: ignore[no-untyped-def]
    session.session(hSession)
    return CKR.FUNCTION_NOT_PARALLEL


def C_GetObjectSize(hSession, hObject, pulSize):  # type: ignore[no-untyped-def]
    write_ulong(pulSize, access.object_size(hSession, hObject))


__all__ = [name for name in dir() if name.startswith("C_")]
