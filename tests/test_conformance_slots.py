"""Conformance of slot and token management (PKCS#11 v3.0 §5.5): C_GetSlotList, C_GetSlotInfo,
C_GetTokenInfo, C_WaitForSlotEvent, C_GetMechanismList, C_GetMechanismInfo, C_InitToken,
C_InitPIN, C_SetPIN."""

from __future__ import annotations

import pytest
from conformance import p11, session, text  # noqa: F401

from pkcs11_kms.ck import CK_EFFECTIVELY_INFINITE, CKF, CKM, CKR

BAD_SLOT = 7  # the acceptance token is the only slot


@pytest.mark.parametrize("function, kind", [
    ("C_GetSlotList", "CK_SLOT_ID"), ("C_GetMechanismList", "CK_MECHANISM_TYPE")])
def test_two_call_lists(p11, function, kind):
    """§5.2 over CK_ULONG arrays (§5.5.1, §5.5.5): NULL asks for the count (CKR_OK); a short array
    is CKR_BUFFER_TOO_SMALL with the count set; a large one gets the list and the exact count.
    NULL pulCount is CKR_ARGUMENTS_BAD."""
    ffi, lib = p11.ffi, p11.lib
    call = getattr(lib, function)  # first argument: tokenPresent or slotID, 0 for both
    n = ffi.new("CK_ULONG *", 12345)
    assert call(0, ffi.NULL, n) == CKR.OK
    count = n[0]
    assert count >= 1
    out = ffi.new(f"{kind}[]", count + 5)
    n[0] = count - 1
    assert call(0, out, n) == CKR.BUFFER_TOO_SMALL and n[0] == count
    n[0] = count + 5
    assert call(0, out, n) == CKR.OK and n[0] == count
    assert len({out[i] for i in range(count)}) == count
    assert call(0, out, ffi.NULL) == CKR.ARGUMENTS_BAD
    assert call(0, ffi.NULL, ffi.NULL) == CKR.ARGUMENTS_BAD


def test_slot_list_with_and_without_token_present(p11):
    """§5.5.1: tokenPresent TRUE lists the slots with a token; every slot here holds its token."""
    ffi, lib = p11.ffi, p11.lib
    lists = []
    for present in (0, 1):
        out, n = ffi.new("CK_SLOT_ID[4]"), ffi.new("CK_ULONG *", 4)
        assert lib.C_GetSlotList(present, out, n) == CKR.OK
        lists.append([out[i] for i in range(n[0])])
    assert lists[0] == lists[1] == [0]


@pytest.mark.parametrize("function, info", [
    ("C_GetSlotInfo", "CK_SLOT_INFO *"), ("C_GetTokenInfo", "CK_TOKEN_INFO *")])
def test_info_arguments(p11, function, info):
    """§5.5.2, §5.5.3: an unknown slot is CKR_SLOT_ID_INVALID; NULL pInfo is CKR_ARGUMENTS_BAD."""
    call = getattr(p11.lib, function)
    assert call(BAD_SLOT, p11.ffi.new(info)) == CKR.SLOT_ID_INVALID
    assert call(0, p11.ffi.NULL) == CKR.ARGUMENTS_BAD


def test_slot_info(p11):
    """§5.5.2 and CK_SLOT_INFO (§3.2): blank-padded strings, CKF_TOKEN_PRESENT set."""
    ffi = p11.ffi
    info = ffi.new("CK_SLOT_INFO *")
    assert p11.lib.C_GetSlotInfo(0, info) == CKR.OK
    assert text(ffi.buffer(info.slotDescription), 64) == "AWS KMS: acceptance"
    assert text(ffi.buffer(info.manufacturerID), 32) == "pkcs11-kms"
    assert info.flags & CKF.TOKEN_PRESENT and not info.flags & CKF.REMOVABLE_DEVICE


def token_info(p11):  # type: ignore[no-untyped-def]
    info = p11.ffi.new("CK_TOKEN_INFO *")
    assert p11.lib.C_GetTokenInfo(0, info) == CKR.OK
    return info


def test_token_info(p11):
    """§5.5.3 and CK_TOKEN_INFO (§3.2): blank-padded strings, an initialised token with a
    generator. Deviation ("public keys"): no CKF_LOGIN_REQUIRED. The utcTime is only meaningful
    with CKF_CLOCK_ON_TOKEN, which the token does not set."""
    ffi = p11.ffi
    info = token_info(p11)
    assert text(ffi.buffer(info.label), 32) == "acceptance"
    assert text(ffi.buffer(info.manufacturerID), 32) == "pkcs11-kms"
    assert text(ffi.buffer(info.model), 16) and text(ffi.buffer(info.serialNumber), 16)
    for flag in (CKF.TOKEN_INITIALIZED, CKF.RNG, CKF.USER_PIN_INITIALIZED):
        assert info.flags & flag, hex(flag)
    for flag in (CKF.LOGIN_REQUIRED, CKF.WRITE_PROTECTED, CKF.CLOCK_ON_TOKEN,
                 CKF.PROTECTED_AUTHENTICATION_PATH, CKF.DUAL_CRYPTO_OPERATIONS):
        assert not info.flags & flag, hex(flag)
    assert info.ulMaxSessionCount == info.ulMaxRwSessionCount == CK_EFFECTIVELY_INFINITE
    assert info.ulMinPinLen <= info.ulMaxPinLen


def test_token_info_counts_sessions(p11):
    """CK_TOKEN_INFO (§3.2): ulSessionCount and ulRwSessionCount count the open sessions."""
    before = token_info(p11)
    ro, rw = p11.open(), p11.open(CKF.SERIAL_SESSION | CKF.RW_SESSION)
    during = token_info(p11)
    assert during.ulSessionCount == before.ulSessionCount + 2
    assert during.ulRwSessionCount == before.ulRwSessionCount + 1
    for h in (ro, rw):
        assert p11.lib.C_CloseSession(h) == CKR.OK
    after = token_info(p11)
    assert (after.ulSessionCount, after.ulRwSessionCount) == (
        before.ulSessionCount, before.ulRwSessionCount)


def mechanism_list(p11) -> list[int]:
    out, n = p11.ffi.new("CK_MECHANISM_TYPE[64]"), p11.ffi.new("CK_ULONG *", 64)
    assert p11.lib.C_GetMechanismList(0, out, n) == CKR.OK
    return [out[i] for i in range(n[0])]


def test_mechanism_info_for_every_listed_mechanism(p11):
    """§5.5.6: every mechanism of the list has its info, with at least one function flag; RSA and
    EC key sizes are in bits (CK_MECHANISM_INFO, §3.5)."""
    info = p11.ffi.new("CK_MECHANISM_INFO *")
    functions = (CKF.ENCRYPT | CKF.DECRYPT | CKF.DIGEST | CKF.SIGN | CKF.VERIFY
                 | CKF.GENERATE | CKF.GENERATE_KEY_PAIR | CKF.WRAP | CKF.UNWRAP | CKF.DERIVE)
    listed = mechanism_list(p11)
    for mechanism in listed:
        assert p11.lib.C_GetMechanismInfo(0, mechanism, info) == CKR.OK, hex(mechanism)
        assert info.flags & functions, hex(mechanism)
        assert not info.flags & (CKF.GENERATE | CKF.GENERATE_KEY_PAIR | CKF.WRAP | CKF.UNWRAP
                                 | CKF.DERIVE), hex(mechanism)  # none of these is supported
    assert p11.lib.C_GetMechanismInfo(0, CKM.SHA256_RSA_PKCS, info) == CKR.OK
    assert (info.ulMinKeySize, info.ulMaxKeySize) == (2048, 2048)
    assert info.flags & CKF.SIGN and info.flags & CKF.VERIFY and info.flags & CKF.HW
    assert p11.lib.C_GetMechanismInfo(0, CKM.ECDSA_SHA256, info) == CKR.OK
    assert (info.ulMinKeySize, info.ulMaxKeySize) == (256, 256)
    assert p11.lib.C_GetMechanismInfo(0, CKM.RSA_PKCS_OAEP, info) == CKR.OK
    assert info.flags & CKF.DECRYPT and (info.ulMinKeySize, info.ulMaxKeySize) == (3072, 3072)
    assert CKM.AES_CBC not in listed


def test_mechanism_info_arguments(p11):
    """§5.5.6: a mechanism the token does not offer is CKR_MECHANISM_INVALID, an unknown slot
    CKR_SLOT_ID_INVALID (also for C_GetMechanismList, §5.5.5), NULL pInfo CKR_ARGUMENTS_BAD."""
    ffi, lib = p11.ffi, p11.lib
    info = ffi.new("CK_MECHANISM_INFO *")
    assert lib.C_GetMechanismInfo(0, CKM.AES_CBC, info) == CKR.MECHANISM_INVALID
    assert lib.C_GetMechanismInfo(BAD_SLOT, CKM.SHA256_RSA_PKCS, info) == CKR.SLOT_ID_INVALID
    assert lib.C_GetMechanismInfo(0, CKM.SHA256_RSA_PKCS, ffi.NULL) == CKR.ARGUMENTS_BAD
    assert lib.C_GetMechanismList(BAD_SLOT, ffi.NULL, ffi.new("CK_ULONG *")) == (
        CKR.SLOT_ID_INVALID)


def test_wait_for_slot_event_is_not_supported(p11):
    """Deviation ("no slot events"): §5.5.4 would return CKR_NO_EVENT with CKF_DONT_BLOCK and block
    otherwise; slots and tokens never change, so the function is the §5.1.6 stub, which never
    blocks a caller."""
    slot = p11.ffi.new("CK_SLOT_ID *")
    for flags in (CKF.DONT_BLOCK, 0):
        assert p11.lib.C_WaitForSlotEvent(flags, slot, p11.ffi.NULL) == CKR.FUNCTION_NOT_SUPPORTED


def test_token_and_pin_administration_is_not_supported(p11, session):
    """Deviation ("no SO", "any PIN"): §5.5.7-5.5.9 initialise the token and set PINs as the SO or
    the user; KMS keys and IAM have neither, so the three are §5.1.6 stubs."""
    ffi, lib = p11.ffi, p11.lib
    pin, label = ffi.new("char[]", b"1234"), ffi.new("char[]", b"x" * 32)
    assert lib.C_InitToken(0, pin, 4, label) == CKR.FUNCTION_NOT_SUPPORTED
    assert lib.C_InitPIN(session, pin, 4) == CKR.FUNCTION_NOT_SUPPORTED
    assert lib.C_SetPIN(session, pin, 4, pin, 4) == CKR.FUNCTION_NOT_SUPPORTED
