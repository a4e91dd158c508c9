"""The CK_RV values each PKCS#11 function may return, and the one rule that fits any code into them.

Source: the per-function "Return values" lists of the PKCS#11 base specification, section 5, as kept
by the OASIS PKCS 11 TC (the 3.2 working text). The codes that only 3.2 asynchronous sessions add
(CKR_PENDING, CKR_SESSION_ASYNC_NOT_SUPPORTED, CKR_PARAMETER_SET_NOT_SUPPORTED,
CKR_SEED_RANDOM_REQUIRED) are left out. To every list we add section 5.1.1 (CKR_GENERAL_ERROR,
CKR_HOST_MEMORY, CKR_FUNCTION_FAILED, CKR_OK), CKR_CRYPTOKI_NOT_INITIALIZED (all but C_Initialize,
C_GetFunctionList, C_GetInterfaceList, C_GetInterface), section 5.1.2 for functions that take a
session handle, and CKR_FUNCTION_NOT_SUPPORTED for the functions this module does not implement.
See docs/design.md, "Return codes". Imports nothing but the constants (the fuzz harness runs it).
"""

from __future__ import annotations

from .. import ck

R = ck.CKR
AEAD_DECRYPT_FAILED = 0x35  # PKCS#11 3.0; not in ck.CKR

UNIVERSAL = frozenset({R.GENERAL_ERROR, R.HOST_MEMORY, R.FUNCTION_FAILED, R.OK})
SESSION = frozenset({R.SESSION_HANDLE_INVALID, R.DEVICE_REMOVED, R.SESSION_CLOSED})
BEFORE_INITIALIZE = frozenset(
    {"C_Initialize", "C_GetFunctionList", "C_GetInterfaceList", "C_GetInterface"}
)

# Functions the module answers with CKR_FUNCTION_NOT_SUPPORTED (abi/ has no implementation).
NOT_IMPLEMENTED = frozenset(
    {
        "C_InitToken", "C_InitPIN", "C_SetPIN", "C_GetOperationState", "C_SetOperationState",
        "C_CreateObject", "C_SetAttributeValue", "C_SignRecoverInit", "C_SignRecover",
        "C_VerifyRecoverInit", "C_VerifyRecover", "C_DigestEncryptUpdate",
        "C_DecryptDigestUpdate", "C_SignEncryptUpdate", "C_DecryptVerifyUpdate",
        "C_GenerateKey", "C_GenerateKeyPair", "C_WrapKey", "C_UnwrapKey",
        "C_WaitForSlotEvent", "C_SessionCancel",
        "C_MessageEncryptInit", "C_EncryptMessage", "C_EncryptMessageBegin",
        "C_EncryptMessageNext", "C_MessageEncryptFinal", "C_MessageDecryptInit",
        "C_DecryptMessage", "C_DecryptMessageBegin", "C_DecryptMessageNext",
        "C_MessageDecryptFinal", "C_MessageSignInit", "C_SignMessage",
        "C_SignMessageBegin", "C_SignMessageNext", "C_MessageSignFinal", "C_MessageVerifyInit",
        "C_VerifyMessage", "C_VerifyMessageBegin", "C_VerifyMessageNext", "C_MessageVerifyFinal",
    }
)

# Section 5's per-function lists, without the codes added below for every function: the name,
# then its codes (CKR_ dropped), continued on indented lines. @NAME is a group defined above its
# first use (codes the lists share).
_SPEC_TEXT = """
@DEV                    DEVICE_ERROR DEVICE_MEMORY DEVICE_REMOVED
@INIT                   ARGUMENTS_BAD @DEV FUNCTION_CANCELED KEY_FUNCTION_NOT_PERMITTED
                        KEY_HANDLE_INVALID KEY_SIZE_RANGE KEY_TYPE_INCONSISTENT MECHANISM_INVALID
                        MECHANISM_PARAM_INVALID OPERATION_ACTIVE PIN_EXPIRED USER_NOT_LOGGED_IN
                        OPERATION_CANCEL_FAILED
@OUT                    ARGUMENTS_BAD BUFFER_TOO_SMALL @DEV FUNCTION_CANCELED OPERATION_ACTIVE
                        OPERATION_NOT_INITIALIZED
@IN                     ARGUMENTS_BAD @DEV FUNCTION_CANCELED OPERATION_ACTIVE
                        OPERATION_NOT_INITIALIZED
@LOGIN                  ARGUMENTS_BAD @DEV FUNCTION_CANCELED OPERATION_ACTIVE
                        OPERATION_NOT_INITIALIZED PIN_INCORRECT PIN_LOCKED
                        SESSION_READ_ONLY_EXISTS USER_ALREADY_LOGGED_IN
                        USER_ANOTHER_ALREADY_LOGGED_IN USER_PIN_NOT_INITIALIZED
                        USER_TOO_MANY_TYPES USER_TYPE_INVALID
@NEW_OBJECT             ARGUMENTS_BAD ATTRIBUTE_READ_ONLY ATTRIBUTE_TYPE_INVALID
                        ATTRIBUTE_VALUE_INVALID @DEV OPERATION_ACTIVE PIN_EXPIRED
                        SESSION_READ_ONLY TEMPLATE_INCONSISTENT TOKEN_WRITE_PROTECTED
                        USER_NOT_LOGGED_IN
@KEYGEN                 @NEW_OBJECT CURVE_NOT_SUPPORTED FUNCTION_CANCELED MECHANISM_INVALID
                        MECHANISM_PARAM_INVALID TEMPLATE_INCOMPLETE
@MSG_BEGIN              ARGUMENTS_BAD @DEV FUNCTION_CANCELED MECHANISM_PARAM_INVALID
                        OPERATION_ACTIVE OPERATION_NOT_INITIALIZED PIN_EXPIRED USER_NOT_LOGGED_IN

C_Initialize            ARGUMENTS_BAD CANT_LOCK CRYPTOKI_ALREADY_INITIALIZED
                        NEED_TO_CREATE_THREADS
C_Finalize              ARGUMENTS_BAD
C_GetInfo               ARGUMENTS_BAD
C_GetFunctionList       ARGUMENTS_BAD
C_GetSlotList           ARGUMENTS_BAD BUFFER_TOO_SMALL
C_GetSlotInfo           ARGUMENTS_BAD DEVICE_ERROR SLOT_ID_INVALID
C_GetTokenInfo          ARGUMENTS_BAD @DEV SLOT_ID_INVALID TOKEN_NOT_PRESENT TOKEN_NOT_RECOGNIZED
C_GetMechanismList      ARGUMENTS_BAD BUFFER_TOO_SMALL @DEV SLOT_ID_INVALID TOKEN_NOT_PRESENT
                        TOKEN_NOT_RECOGNIZED
C_GetMechanismInfo      ARGUMENTS_BAD @DEV MECHANISM_INVALID SLOT_ID_INVALID TOKEN_NOT_PRESENT
                        TOKEN_NOT_RECOGNIZED
C_InitToken             ARGUMENTS_BAD @DEV FUNCTION_CANCELED PIN_INCORRECT PIN_LOCKED
                        SESSION_EXISTS SLOT_ID_INVALID TOKEN_NOT_PRESENT TOKEN_NOT_RECOGNIZED
                        TOKEN_WRITE_PROTECTED
C_InitPIN               ARGUMENTS_BAD @DEV FUNCTION_CANCELED OPERATION_ACTIVE PIN_INVALID
                        PIN_LEN_RANGE SESSION_READ_ONLY TOKEN_WRITE_PROTECTED USER_NOT_LOGGED_IN
C_SetPIN                ARGUMENTS_BAD @DEV FUNCTION_CANCELED OPERATION_ACTIVE PIN_INCORRECT
                        PIN_INVALID PIN_LEN_RANGE PIN_LOCKED SESSION_READ_ONLY
                        TOKEN_WRITE_PROTECTED
C_OpenSession           ARGUMENTS_BAD @DEV SESSION_COUNT SESSION_PARALLEL_NOT_SUPPORTED
                        SESSION_READ_WRITE_SO_EXISTS SLOT_ID_INVALID TOKEN_NOT_PRESENT
                        TOKEN_NOT_RECOGNIZED TOKEN_WRITE_PROTECTED
C_CloseSession          @DEV OPERATION_ACTIVE
C_CloseAllSessions      @DEV SLOT_ID_INVALID TOKEN_NOT_PRESENT
C_GetSessionInfo        ARGUMENTS_BAD @DEV OPERATION_ACTIVE
C_GetOperationState     ARGUMENTS_BAD BUFFER_TOO_SMALL @DEV OPERATION_ACTIVE
                        OPERATION_NOT_INITIALIZED STATE_UNSAVEABLE
C_SetOperationState     ARGUMENTS_BAD @DEV KEY_CHANGED KEY_NEEDED KEY_NOT_NEEDED OPERATION_ACTIVE
                        SAVED_STATE_INVALID
C_Login                 @LOGIN
C_LoginUser             @LOGIN
C_Logout                @DEV OPERATION_ACTIVE USER_NOT_LOGGED_IN
C_CreateObject          @NEW_OBJECT CURVE_NOT_SUPPORTED DOMAIN_PARAMS_INVALID TEMPLATE_INCOMPLETE
C_CopyObject            @NEW_OBJECT ACTION_PROHIBITED OBJECT_HANDLE_INVALID
C_DestroyObject         ACTION_PROHIBITED @DEV OBJECT_HANDLE_INVALID OPERATION_ACTIVE PIN_EXPIRED
                        SESSION_READ_ONLY TOKEN_WRITE_PROTECTED
C_GetObjectSize         ARGUMENTS_BAD @DEV INFORMATION_SENSITIVE OBJECT_HANDLE_INVALID
                        OPERATION_ACTIVE
C_GetAttributeValue     ARGUMENTS_BAD ATTRIBUTE_SENSITIVE ATTRIBUTE_TYPE_INVALID BUFFER_TOO_SMALL
                        @DEV OBJECT_HANDLE_INVALID OPERATION_ACTIVE
C_SetAttributeValue     @NEW_OBJECT ACTION_PROHIBITED OBJECT_HANDLE_INVALID
C_FindObjectsInit       ARGUMENTS_BAD ATTRIBUTE_TYPE_INVALID ATTRIBUTE_VALUE_INVALID @DEV
                        OPERATION_ACTIVE PIN_EXPIRED
C_FindObjects           ARGUMENTS_BAD @DEV OPERATION_ACTIVE OPERATION_NOT_INITIALIZED
C_FindObjectsFinal      @DEV OPERATION_ACTIVE OPERATION_NOT_INITIALIZED
C_EncryptInit           @INIT
C_Encrypt               @OUT DATA_INVALID DATA_LEN_RANGE
C_EncryptUpdate         @OUT DATA_LEN_RANGE
C_EncryptFinal          @OUT DATA_LEN_RANGE
C_DecryptInit           @INIT
C_Decrypt               @OUT ENCRYPTED_DATA_INVALID ENCRYPTED_DATA_LEN_RANGE USER_NOT_LOGGED_IN
C_DecryptUpdate         @OUT ENCRYPTED_DATA_INVALID ENCRYPTED_DATA_LEN_RANGE USER_NOT_LOGGED_IN
C_DecryptFinal          @OUT ENCRYPTED_DATA_INVALID ENCRYPTED_DATA_LEN_RANGE USER_NOT_LOGGED_IN
C_DigestInit            ARGUMENTS_BAD @DEV FUNCTION_CANCELED MECHANISM_INVALID
                        MECHANISM_PARAM_INVALID OPERATION_ACTIVE PIN_EXPIRED USER_NOT_LOGGED_IN
                        OPERATION_CANCEL_FAILED
C_Digest                @OUT
C_DigestUpdate          @IN
C_DigestKey             @DEV FUNCTION_CANCELED KEY_HANDLE_INVALID KEY_INDIGESTIBLE KEY_SIZE_RANGE
                        OPERATION_ACTIVE OPERATION_NOT_INITIALIZED
C_DigestFinal           @OUT
C_SignInit              @INIT
C_Sign                  @OUT DATA_INVALID DATA_LEN_RANGE USER_NOT_LOGGED_IN FUNCTION_REJECTED
                        TOKEN_RESOURCE_EXCEEDED
C_SignUpdate            @IN DATA_LEN_RANGE USER_NOT_LOGGED_IN TOKEN_RESOURCE_EXCEEDED
C_SignFinal             @OUT DATA_LEN_RANGE USER_NOT_LOGGED_IN FUNCTION_REJECTED
                        TOKEN_RESOURCE_EXCEEDED
C_SignRecoverInit       @INIT
C_SignRecover           @OUT DATA_INVALID DATA_LEN_RANGE USER_NOT_LOGGED_IN
                        TOKEN_RESOURCE_EXCEEDED
C_VerifyInit            @INIT
C_Verify                @IN DATA_INVALID DATA_LEN_RANGE SIGNATURE_INVALID SIGNATURE_LEN_RANGE
                        TOKEN_RESOURCE_EXCEEDED
C_VerifyUpdate          @IN DATA_LEN_RANGE TOKEN_RESOURCE_EXCEEDED
C_VerifyFinal           @IN DATA_LEN_RANGE SIGNATURE_INVALID SIGNATURE_LEN_RANGE
                        TOKEN_RESOURCE_EXCEEDED
C_VerifyRecoverInit     @INIT
C_VerifyRecover         @OUT DATA_INVALID DATA_LEN_RANGE SIGNATURE_INVALID SIGNATURE_LEN_RANGE
                        TOKEN_RESOURCE_EXCEEDED
C_DigestEncryptUpdate   @OUT DATA_LEN_RANGE
C_DecryptDigestUpdate   @OUT ENCRYPTED_DATA_INVALID ENCRYPTED_DATA_LEN_RANGE
C_SignEncryptUpdate     @OUT DATA_LEN_RANGE USER_NOT_LOGGED_IN
C_DecryptVerifyUpdate   @OUT DATA_LEN_RANGE ENCRYPTED_DATA_INVALID ENCRYPTED_DATA_LEN_RANGE
C_GenerateKey           @KEYGEN
C_GenerateKeyPair       @KEYGEN DOMAIN_PARAMS_INVALID
C_WrapKey               ARGUMENTS_BAD BUFFER_TOO_SMALL @DEV FUNCTION_CANCELED KEY_HANDLE_INVALID
                        KEY_NOT_WRAPPABLE KEY_SIZE_RANGE KEY_UNEXTRACTABLE MECHANISM_INVALID
                        MECHANISM_PARAM_INVALID OPERATION_ACTIVE PIN_EXPIRED USER_NOT_LOGGED_IN
                        WRAPPING_KEY_HANDLE_INVALID WRAPPING_KEY_SIZE_RANGE
                        WRAPPING_KEY_TYPE_INCONSISTENT
C_UnwrapKey             @KEYGEN BUFFER_TOO_SMALL DOMAIN_PARAMS_INVALID
                        UNWRAPPING_KEY_HANDLE_INVALID UNWRAPPING_KEY_SIZE_RANGE
                        UNWRAPPING_KEY_TYPE_INCONSISTENT WRAPPED_KEY_INVALID WRAPPED_KEY_LEN_RANGE
C_DeriveKey             @KEYGEN DOMAIN_PARAMS_INVALID KEY_HANDLE_INVALID KEY_SIZE_RANGE
                        KEY_TYPE_INCONSISTENT
C_SeedRandom            ARGUMENTS_BAD @DEV FUNCTION_CANCELED OPERATION_ACTIVE
                        RANDOM_SEED_NOT_SUPPORTED RANDOM_NO_RNG USER_NOT_LOGGED_IN
C_GenerateRandom        ARGUMENTS_BAD @DEV FUNCTION_CANCELED OPERATION_ACTIVE RANDOM_NO_RNG
                        USER_NOT_LOGGED_IN
C_GetFunctionStatus     FUNCTION_NOT_PARALLEL OPERATION_ACTIVE
C_CancelFunction        FUNCTION_NOT_PARALLEL OPERATION_ACTIVE
C_WaitForSlotEvent      ARGUMENTS_BAD NO_EVENT
C_GetInterfaceList      ARGUMENTS_BAD BUFFER_TOO_SMALL
C_GetInterface          ARGUMENTS_BAD BUFFER_TOO_SMALL
C_SessionCancel         @DEV OPERATION_ACTIVE OPERATION_CANCEL_FAILED TOKEN_NOT_PRESENT
C_MessageEncryptInit    @INIT
C_EncryptMessage        @OUT DATA_INVALID DATA_LEN_RANGE MECHANISM_PARAM_INVALID
C_EncryptMessageBegin   @MSG_BEGIN
C_EncryptMessageNext    @OUT DATA_LEN_RANGE MECHANISM_PARAM_INVALID
C_MessageEncryptFinal   @IN
C_MessageDecryptInit    @INIT
C_DecryptMessage        @OUT ENCRYPTED_DATA_INVALID ENCRYPTED_DATA_LEN_RANGE
                        MECHANISM_PARAM_INVALID USER_NOT_LOGGED_IN OPERATION_CANCEL_FAILED AEAD
C_DecryptMessageBegin   @MSG_BEGIN
C_DecryptMessageNext    @OUT ENCRYPTED_DATA_INVALID ENCRYPTED_DATA_LEN_RANGE
                        MECHANISM_PARAM_INVALID USER_NOT_LOGGED_IN AEAD
C_MessageDecryptFinal   @IN USER_NOT_LOGGED_IN
C_MessageSignInit       @INIT
C_SignMessage           @OUT DATA_INVALID DATA_LEN_RANGE MECHANISM_PARAM_INVALID
                        USER_NOT_LOGGED_IN FUNCTION_REJECTED TOKEN_RESOURCE_EXCEEDED
C_SignMessageBegin      @MSG_BEGIN TOKEN_RESOURCE_EXCEEDED
C_SignMessageNext       @OUT DATA_LEN_RANGE MECHANISM_PARAM_INVALID USER_NOT_LOGGED_IN
                        FUNCTION_REJECTED TOKEN_RESOURCE_EXCEEDED
C_MessageSignFinal      @IN USER_NOT_LOGGED_IN FUNCTION_REJECTED TOKEN_RESOURCE_EXCEEDED
C_MessageVerifyInit     @INIT
C_VerifyMessage         @IN DATA_INVALID DATA_LEN_RANGE MECHANISM_PARAM_INVALID SIGNATURE_INVALID
                        SIGNATURE_LEN_RANGE TOKEN_RESOURCE_EXCEEDED
C_VerifyMessageBegin    @MSG_BEGIN
C_VerifyMessageNext     @IN DATA_LEN_RANGE MECHANISM_PARAM_INVALID SIGNATURE_INVALID
                        SIGNATURE_LEN_RANGE TOKEN_RESOURCE_EXCEEDED
C_MessageVerifyFinal    @IN DATA_LEN_RANGE TOKEN_RESOURCE_EXCEEDED
"""


def _parse(text: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    name = ""
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            first, line = line.split(None, 1)
            name = first.lstrip("@")
            rows[name] = []
        for word in line.split():
            rows[name] += rows[word[1:]] if word.startswith("@") else [word]
    return rows


_ROWS = _parse(_SPEC_TEXT)
_SPEC = {name: codes for name, codes in _ROWS.items() if name.startswith("C_")}

# Functions without a session handle (section 5.1.2 lists them); every other one takes one.
SESSIONLESS = frozenset(
    {
        "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList",
        "C_GetSlotInfo", "C_GetTokenInfo", "C_WaitForSlotEvent", "C_GetMechanismList",
        "C_GetMechanismInfo", "C_InitToken", "C_OpenSession", "C_CloseAllSessions",
        "C_GetInterfaceList", "C_GetInterface",
    }
)


def _codes(name: str) -> frozenset[int]:
    codes = {AEAD_DECRYPT_FAILED if word == "AEAD" else int(R.__members__[word])
             for word in _SPEC[name]}
    codes |= UNIVERSAL
    if name not in BEFORE_INITIALIZE:
        codes.add(R.CRYPTOKI_NOT_INITIALIZED)
    if name not in SESSIONLESS:
        codes |= SESSION
    if name in NOT_IMPLEMENTED:
        codes.add(R.FUNCTION_NOT_SUPPORTED)
    return frozenset(int(c) for c in codes)


ALLOWED: dict[str, frozenset[int]] = {name: _codes(name) for name in _SPEC}

# The fallback rule: a code a function may not return becomes the first of these it may return,
# else CKR_FUNCTION_FAILED (allowed everywhere). Key errors belong to *Init; device faults that a
# function may not report become plain failures.
SUBSTITUTES: dict[int, tuple[int, ...]] = {
    R.DATA_LEN_RANGE: (R.ENCRYPTED_DATA_LEN_RANGE,),
    R.DATA_INVALID: (R.ENCRYPTED_DATA_INVALID,),
    R.ENCRYPTED_DATA_LEN_RANGE: (R.DATA_LEN_RANGE,),
    R.ENCRYPTED_DATA_INVALID: (R.DATA_INVALID,),
    R.DEVICE_MEMORY: (R.DEVICE_ERROR,),
    R.TOKEN_NOT_PRESENT: (R.DEVICE_REMOVED, R.DEVICE_ERROR),
    R.TOKEN_NOT_RECOGNIZED: (R.DEVICE_ERROR,),
    R.SESSION_CLOSED: (R.SESSION_HANDLE_INVALID,),
    R.SLOT_ID_INVALID: (R.ARGUMENTS_BAD,),
    R.SIGNATURE_LEN_RANGE: (R.SIGNATURE_INVALID,),
}


def allowed(name: str) -> frozenset[int]:
    """The codes `name` may return; unknown names get the universal ones."""
    return ALLOWED.get(name, frozenset(int(c) for c in UNIVERSAL))


def fit(name: str, rv: int) -> int:
    """`rv` if `name` may return it, else its substitute (the one fallback rule)."""
    codes = allowed(name)
    if rv in codes:
        return rv
    for other in SUBSTITUTES.get(rv, ()):
        if other in codes:
            return int(other)
    return int(R.FUNCTION_FAILED)


def main() -> None:
    for name, codes in ALLOWED.items():
        print(name, " ".join(hex(c) for c in sorted(codes)))


if __name__ == "__main__":
    main()
