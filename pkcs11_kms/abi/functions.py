"""C_* functions of the token core: each unpacks its pointers, calls the core, packs the results."""

from __future__ import annotations

from _kms_pkcs11 import ffi, lib

from ..ck import CKR
from ..core import access, module, session, slots
from ..errors import PKCS11Error
from .cdata import (
    CK_ATTRIBUTE_PTR,
    CK_BBOOL,
    CK_FLAGS,
    CK_INFO_PTR,
    CK_MECHANISM_INFO_PTR,
    CK_MECHANISM_TYPE,
    CK_MECHANISM_TYPE_PTR,
    CK_NOTIFY,
    CK_OBJECT_HANDLE,
    CK_OBJECT_HANDLE_PTR,
    CK_RV,
    CK_SESSION_HANDLE,
    CK_SESSION_HANDLE_PTR,
    CK_SESSION_INFO_PTR,
    CK_SLOT_ID,
    CK_SLOT_ID_PTR,
    CK_SLOT_INFO_PTR,
    CK_TOKEN_INFO_PTR,
    CK_ULONG,
    CK_ULONG_PTR,
    CK_USER_TYPE,
    CK_UTF8CHAR_PTR,
    CK_VOID_PTR,
)
from .marshal import (
    MAX_HANDLES,
    NULL,
    ULONG_SIZE,
    copy_out,
    fill_attributes,
    new_struct,
    read_local,
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


def C_Initialize(pInitArgs: CK_VOID_PTR) -> None:
    if pInitArgs == NULL:
        module.initialize(module.InitArgs())
        return
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
        reserved = read_local(buffer, length).decode("utf-8", "replace")
    module.initialize(module.InitArgs(int(args.flags), callbacks, reserved))


def C_Finalize(pReserved: CK_VOID_PTR) -> CK_RV | None:
    if pReserved != NULL:
        return CKR.ARGUMENTS_BAD
    module.finalize()
    return None


def C_GetInfo(pInfo: CK_INFO_PTR) -> None:
    info = module.get_info()
    out = new_struct("CK_INFO")
    set_version(out.cryptokiVersion, info.cryptoki_version)
    set_text(out.manufacturerID, info.manufacturer, 32)
    out.flags = info.flags
    set_text(out.libraryDescription, info.description, 32)
    set_version(out.libraryVersion, info.library_version)
    write_struct(pInfo, out)


# ---- Slots and tokens (§5.5) ----


def C_GetSlotList(
    tokenPresent: CK_BBOOL, pSlotList: CK_SLOT_ID_PTR, pulCount: CK_ULONG_PTR,
) -> None:
    require(pulCount)
    write_ulongs(slots.get_slot_list(bool(tokenPresent)), pSlotList, pulCount)


def C_GetSlotInfo(slotID: CK_SLOT_ID, pInfo: CK_SLOT_INFO_PTR) -> None:
    info = slots.get_slot_info(slotID)
    out = new_struct("CK_SLOT_INFO")
    set_text(out.slotDescription, info.description, 64)
    set_text(out.manufacturerID, info.manufacturer, 32)
    out.flags = info.flags
    set_version(out.hardwareVersion, info.hardware_version)
    set_version(out.firmwareVersion, info.firmware_version)
    write_struct(pInfo, out)


def C_GetTokenInfo(slotID: CK_SLOT_ID, pInfo: CK_TOKEN_INFO_PTR) -> None:
    info = slots.get_token_info(slotID)
    require(pInfo)
    out = new_struct("CK_TOKEN_INFO")
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


def C_GetMechanismList(
    slotID: CK_SLOT_ID, pMechanismList: CK_MECHANISM_TYPE_PTR, pulCount: CK_ULONG_PTR,
) -> None:
    require(pulCount)
    write_ulongs(slots.get_mechanism_list(slotID), pMechanismList, pulCount)


def C_GetMechanismInfo(
    slotID: CK_SLOT_ID, type: CK_MECHANISM_TYPE, pInfo: CK_MECHANISM_INFO_PTR,
) -> None:
    low, high, flags = slots.get_mechanism_info(slotID, type)
    write_struct(pInfo, new_struct("CK_MECHANISM_INFO", (low, high, flags)))


# ---- Sessions (§5.6) ----


def C_OpenSession(
    slotID: CK_SLOT_ID, flags: CK_FLAGS, pApplication: CK_VOID_PTR, Notify: CK_NOTIFY,
    phSession: CK_SESSION_HANDLE_PTR,
) -> None:
    require(phSession)
    handle = session.open_session(slotID, flags)  # the handle is written only when it exists
    try:
        write_ulong(phSession, handle)
    except PKCS11Error:
        session.close_session(handle)
        raise


def C_CloseSession(hSession: CK_SESSION_HANDLE) -> None:
    session.close_session(hSession)


def C_CloseAllSessions(slotID: CK_SLOT_ID) -> None:
    session.close_all_sessions(slotID)


def C_GetSessionInfo(hSession: CK_SESSION_HANDLE, pInfo: CK_SESSION_INFO_PTR) -> None:
    info = session.get_session_info(hSession)
    write_struct(pInfo, new_struct("CK_SESSION_INFO", (
        info.slot_id, info.state, info.flags, info.device_error)))


def C_Login(
    hSession: CK_SESSION_HANDLE, userType: CK_USER_TYPE, pPin: CK_UTF8CHAR_PTR, ulPinLen: CK_ULONG,
) -> None:
    # Any PIN is accepted (KMS authorises with IAM): the PIN is never read, so never logged.
    # NULL is for a protected authentication path, and only with no length (§5.6).
    if pPin == NULL and ulPinLen:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL PIN with a length")
    session.login(hSession, userType)


def C_LoginUser(
    hSession: CK_SESSION_HANDLE, userType: CK_USER_TYPE, pPin: CK_UTF8CHAR_PTR, ulPinLen: CK_ULONG,
    pUsername: CK_UTF8CHAR_PTR, ulUsernameLen: CK_ULONG,
) -> None:
    if pUsername == NULL and ulUsernameLen:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL user name with a length")
    C_Login(hSession, userType, pPin, ulPinLen)


def C_Logout(hSession: CK_SESSION_HANDLE) -> None:
    session.logout(hSession)


# ---- Objects (§5.7) ----


def C_FindObjectsInit(
    hSession: CK_SESSION_HANDLE, pTemplate: CK_ATTRIBUTE_PTR, ulCount: CK_ULONG,
) -> None:
    access.find_objects_init(hSession, read_template(pTemplate, ulCount))


def C_FindObjects(
    hSession: CK_SESSION_HANDLE, phObject: CK_OBJECT_HANDLE_PTR, ulMaxObjectCount: CK_ULONG,
    pulObjectCount: CK_ULONG_PTR,
) -> None:
    require(pulObjectCount)
    if ulMaxObjectCount:
        require(phObject)

    def deliver(found: list[int]) -> None:
        if found:
            copy_out(phObject, ffi.new("CK_OBJECT_HANDLE[]", found), len(found) * ULONG_SIZE)
        write_ulong(pulObjectCount, len(found))

    access.find_objects(hSession, min(ulMaxObjectCount, MAX_HANDLES), deliver)


def C_FindObjectsFinal(hSession: CK_SESSION_HANDLE) -> None:
    access.find_objects_final(hSession)


def C_GetAttributeValue(
    hSession: CK_SESSION_HANDLE, hObject: CK_OBJECT_HANDLE, pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
) -> CK_RV | None:
    if ulCount == 0:
        access.attribute_values(hSession, hObject, [])
        return None
    template = read_template_array(pTemplate, ulCount)
    types = [int(a.type) for a in template]
    return fill_attributes(pTemplate, template, access.attribute_values(hSession, hObject, types))


def C_CopyObject(
    hSession: CK_SESSION_HANDLE, hObject: CK_OBJECT_HANDLE, pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG, phNewObject: CK_OBJECT_HANDLE_PTR,
) -> None:
    require(phNewObject)
    handle = access.copy_object(hSession, hObject, read_template(pTemplate, ulCount))
    try:
        write_ulong(phNewObject, handle)
    except PKCS11Error:
        access.discard_copy(hSession, handle)  # no copy the host cannot know of
        raise


def C_DestroyObject(hSession: CK_SESSION_HANDLE, hObject: CK_OBJECT_HANDLE) -> None:
    access.destroy_object(hSession, hObject)


def C_GetFunctionStatus(hSession: CK_SESSION_HANDLE) -> CK_RV:
    session.session(hSession)
    return CKR.FUNCTION_NOT_PARALLEL  # §5.20: the legacy parallel-function calls


def C_CancelFunction(hSession: CK_SESSION_HANDLE) -> CK_RV:
    session.session(hSession)
    return CKR.FUNCTION_NOT_PARALLEL


def C_GetObjectSize(
    hSession: CK_SESSION_HANDLE, hObject: CK_OBJECT_HANDLE, pulSize: CK_ULONG_PTR,
) -> None:
    write_ulong(pulSize, access.object_size(hSession, hObject))


__all__ = [name for name in dir() if name.startswith("C_")]
