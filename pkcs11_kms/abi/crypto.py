"""C_* functions of the cryptographic operations: sign, verify, encrypt, decrypt, random (§5.9-5.15)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from _kms_pkcs11 import ffi

from ..ck import CKR
from ..core import access, derive, mechanisms, random
from ..core import operations as ops
from ..core.mechanisms import Kind
from ..core.params import (
    Ecdh1Params,
    EddsaParams,
    MacLength,
    MechanismArgs,
    OaepParams,
    Params,
    PssParams,
    SignContext,
)
from ..core.session import session
from ..errors import PKCS11Error
from ..trust import wipe
from .cdata import (
    CK_ATTRIBUTE_PTR,
    CK_BYTE_PTR,
    CK_MECHANISM_PTR,
    CK_OBJECT_HANDLE,
    CK_OBJECT_HANDLE_PTR,
    CK_SESSION_HANDLE,
    CK_ULONG,
    CK_ULONG_PTR,
    Struct,
)
from .marshal import (
    MAX_PARAMETER,
    NULL,
    output_capacity,
    read_bytes,
    read_struct,
    read_template,
    require,
    write_data,
    write_ulong,
)

T = TypeVar("T")

def _pss(p: Struct) -> PssParams:
    return PssParams(int(p.hashAlg), int(p.mgf), int(p.sLen))


def _oaep(p: Struct) -> OaepParams:
    return OaepParams(int(p.hashAlg), int(p.mgf), int(p.source),
                      read_bytes(p.pSourceData, p.ulSourceDataLen, MAX_PARAMETER,
                                 CKR.MECHANISM_PARAM_INVALID))


def _bytes(pointer: CK_BYTE_PTR, length: int) -> bytes:
    return read_bytes(pointer, length, MAX_PARAMETER, CKR.MECHANISM_PARAM_INVALID)


def _eddsa(p: Struct) -> EddsaParams:
    return EddsaParams(bool(p.phFlag), _bytes(p.pContextData, int(p.ulContextDataLen)))


def _sign_context(p: Struct) -> SignContext:
    return SignContext(int(p.hedgeVariant), _bytes(p.pContext, int(p.ulContextLen)))


def _ecdh1(p: Struct) -> Ecdh1Params:
    return Ecdh1Params(int(p.kdf), _bytes(p.pSharedData, int(p.ulSharedDataLen)),
                       _bytes(p.pPublicData, int(p.ulPublicDataLen)))


def _mac_length(p: Struct) -> MacLength:
    return MacLength(int(p[0]))


# A mechanism's parameter structure (core/mechanisms.py's registry names it) -> its reader
READERS: dict[str, Callable[[Struct], Params]] = {
    "CK_RSA_PKCS_PSS_PARAMS": _pss,
    "CK_RSA_PKCS_OAEP_PARAMS": _oaep,
    "CK_EDDSA_PARAMS": _eddsa,
    "CK_SIGN_ADDITIONAL_CONTEXT": _sign_context,
    "CK_ECDH1_DERIVE_PARAMS": _ecdh1,
    "CK_MAC_GENERAL_PARAMS": _mac_length,
}


def read_mechanism(pMechanism: CK_MECHANISM_PTR) -> MechanismArgs | None:
    if pMechanism == NULL:
        return None
    m = read_struct(pMechanism, "CK_MECHANISM")
    mechanism, p, length = int(m.mechanism), m.pParameter, int(m.ulParameterLen)
    offered = mechanisms.known(mechanism)
    struct = offered.parameter if offered is not None else None
    if struct is None:
        if p == NULL:
            return MechanismArgs(mechanism, None)
        return MechanismArgs(mechanism, read_bytes(p, length, MAX_PARAMETER,
                                                   CKR.MECHANISM_PARAM_INVALID))
    assert offered is not None
    if p == NULL and length == 0 and offered.parameter_optional:
        return MechanismArgs(mechanism, None)
    if p == NULL or length != ffi.sizeof(struct):
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, f"{struct} expected")
    return MechanismArgs(mechanism, READERS[struct](read_struct(p, struct)))


def _produce(output: ops.Output, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR) -> None:
    """The two-call convention over a core Output (§5.2)."""
    if output.data is not None:  # the operation has ended: a secret result is wiped once copied
        try:
            write_data(out, output.data)
        finally:
            wipe(output.data)
    write_ulong(out_len, output.length)
    if out != NULL and output.data is None:
        raise PKCS11Error(CKR.BUFFER_TOO_SMALL)


def _arguments(kind: Kind, hSession: CK_SESSION_HANDLE, read: Callable[[], T]) -> T:
    """Reads a call's arguments; bad ones end the operation, as any error but one (§5.2)."""
    try:
        return read()
    except PKCS11Error:
        ops.end(kind, hSession)
        raise


def _single(kind: Kind, hSession: CK_SESSION_HANDLE, pData: CK_BYTE_PTR, ulDataLen: CK_ULONG,
            pOut: CK_BYTE_PTR, pulOutLen: CK_ULONG_PTR) -> None:
    def read() -> tuple[bytes, int | None]:
        capacity = output_capacity(pOut, pulOutLen)
        return read_bytes(pData, ulDataLen), capacity

    data, capacity = _arguments(kind, hSession, read)
    _produce(ops.single(kind, hSession, data, capacity), pOut, pulOutLen)


def _update(kind: Kind, hSession: CK_SESSION_HANDLE, pPart: CK_BYTE_PTR, ulPartLen: CK_ULONG,
            pulOutLen: CK_ULONG_PTR | None = None) -> None:
    def read() -> bytes:
        if pulOutLen is not None:
            require(pulOutLen)
        return read_bytes(pPart, ulPartLen)

    ops.update(kind, hSession, _arguments(kind, hSession, read))


def _final(kind: Kind, hSession: CK_SESSION_HANDLE, pOut: CK_BYTE_PTR,
           pulOutLen: CK_ULONG_PTR) -> None:
    def read() -> int | None:
        return output_capacity(pOut, pulOutLen)

    _produce(ops.final(kind, hSession, _arguments(kind, hSession, read)), pOut, pulOutLen)


def _init(kind: Kind) -> Callable[[CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE], None]:
    def init(hSession: CK_SESSION_HANDLE, pMechanism: CK_MECHANISM_PTR,
             hKey: CK_OBJECT_HANDLE) -> None:
        ops.init(kind, hSession, read_mechanism(pMechanism), hKey)

    return init


C_SignInit = _init(Kind.SIGN)
C_VerifyInit = _init(Kind.VERIFY)
C_EncryptInit = _init(Kind.ENCRYPT)
C_DecryptInit = _init(Kind.DECRYPT)


def C_Sign(
    hSession: CK_SESSION_HANDLE, pData: CK_BYTE_PTR, ulDataLen: CK_ULONG, pSignature: CK_BYTE_PTR,
    pulSignatureLen: CK_ULONG_PTR,
) -> None:
    _single(Kind.SIGN, hSession, pData, ulDataLen, pSignature, pulSignatureLen)


def C_SignUpdate(
    hSession: CK_SESSION_HANDLE, pPart: CK_BYTE_PTR, ulPartLen: CK_ULONG,
) -> None:
    _update(Kind.SIGN, hSession, pPart, ulPartLen)


def C_SignFinal(
    hSession: CK_SESSION_HANDLE, pSignature: CK_BYTE_PTR, pulSignatureLen: CK_ULONG_PTR,
) -> None:
    _final(Kind.SIGN, hSession, pSignature, pulSignatureLen)


def _signature(pSignature: CK_BYTE_PTR, ulSignatureLen: CK_ULONG) -> bytes:
    return read_bytes(pSignature, ulSignatureLen, MAX_PARAMETER, CKR.SIGNATURE_LEN_RANGE)


def C_Verify(
    hSession: CK_SESSION_HANDLE, pData: CK_BYTE_PTR, ulDataLen: CK_ULONG, pSignature: CK_BYTE_PTR,
    ulSignatureLen: CK_ULONG,
) -> None:
    data, signature = _arguments(Kind.VERIFY, hSession, lambda: (
        read_bytes(pData, ulDataLen), _signature(pSignature, ulSignatureLen)))
    ops.verify(hSession, data, signature)


def C_VerifyUpdate(
    hSession: CK_SESSION_HANDLE, pPart: CK_BYTE_PTR, ulPartLen: CK_ULONG,
) -> None:
    _update(Kind.VERIFY, hSession, pPart, ulPartLen)


def C_VerifyFinal(
    hSession: CK_SESSION_HANDLE, pSignature: CK_BYTE_PTR, ulSignatureLen: CK_ULONG,
) -> None:
    signature = _arguments(Kind.VERIFY, hSession, lambda: _signature(pSignature, ulSignatureLen))
    ops.verify(hSession, None, signature)


def C_Encrypt(
    hSession: CK_SESSION_HANDLE, pData: CK_BYTE_PTR, ulDataLen: CK_ULONG,
    pEncryptedData: CK_BYTE_PTR, pulEncryptedDataLen: CK_ULONG_PTR,
) -> None:
    _single(Kind.ENCRYPT, hSession, pData, ulDataLen, pEncryptedData, pulEncryptedDataLen)


def _producing_update(kind: Kind, hSession: CK_SESSION_HANDLE, pPart: CK_BYTE_PTR,
                      ulPartLen: CK_ULONG, pOut: CK_BYTE_PTR, pulOutLen: CK_ULONG_PTR) -> None:
    """RSA-OAEP is one block: an update produces nothing; everything comes out of the final call.
    A NULL output asks for the length only (§5.2): the part is not taken then."""
    if pOut == NULL:
        def query() -> None:
            require(pulOutLen)
            if kind not in session(hSession).operations:
                raise PKCS11Error(CKR.OPERATION_NOT_INITIALIZED, f"no {kind} operation")

        _arguments(kind, hSession, query)
    else:
        _update(kind, hSession, pPart, ulPartLen, pulOutLen)
    write_ulong(pulOutLen, 0)


def C_EncryptUpdate(
    hSession: CK_SESSION_HANDLE, pPart: CK_BYTE_PTR, ulPartLen: CK_ULONG,
    pEncryptedPart: CK_BYTE_PTR, pulEncryptedPartLen: CK_ULONG_PTR,
) -> None:
    _producing_update(Kind.ENCRYPT, hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen)


def C_EncryptFinal(
    hSession: CK_SESSION_HANDLE, pLastEncryptedPart: CK_BYTE_PTR,
    pulLastEncryptedPartLen: CK_ULONG_PTR,
) -> None:
    _final(Kind.ENCRYPT, hSession, pLastEncryptedPart, pulLastEncryptedPartLen)


def C_Decrypt(
    hSession: CK_SESSION_HANDLE, pEncryptedData: CK_BYTE_PTR, ulEncryptedDataLen: CK_ULONG,
    pData: CK_BYTE_PTR, pulDataLen: CK_ULONG_PTR,
) -> None:
    _single(Kind.DECRYPT, hSession, pEncryptedData, ulEncryptedDataLen, pData, pulDataLen)


def C_DecryptUpdate(
    hSession: CK_SESSION_HANDLE, pEncryptedPart: CK_BYTE_PTR, ulEncryptedPartLen: CK_ULONG,
    pPart: CK_BYTE_PTR, pulPartLen: CK_ULONG_PTR,
) -> None:
    _producing_update(Kind.DECRYPT, hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen)


def C_DecryptFinal(
    hSession: CK_SESSION_HANDLE, pLastPart: CK_BYTE_PTR, pulLastPartLen: CK_ULONG_PTR,
) -> None:
    _final(Kind.DECRYPT, hSession, pLastPart, pulLastPartLen)


def C_DigestInit(hSession: CK_SESSION_HANDLE, pMechanism: CK_MECHANISM_PTR) -> None:
    ops.digest_init(hSession, read_mechanism(pMechanism))


def C_Digest(
    hSession: CK_SESSION_HANDLE, pData: CK_BYTE_PTR, ulDataLen: CK_ULONG, pDigest: CK_BYTE_PTR,
    pulDigestLen: CK_ULONG_PTR,
) -> None:
    _single(Kind.DIGEST, hSession, pData, ulDataLen, pDigest, pulDigestLen)


def C_DigestUpdate(
    hSession: CK_SESSION_HANDLE, pPart: CK_BYTE_PTR, ulPartLen: CK_ULONG,
) -> None:
    _update(Kind.DIGEST, hSession, pPart, ulPartLen)


def C_DigestFinal(
    hSession: CK_SESSION_HANDLE, pDigest: CK_BYTE_PTR, pulDigestLen: CK_ULONG_PTR,
) -> None:
    _final(Kind.DIGEST, hSession, pDigest, pulDigestLen)


def C_DigestKey(hSession: CK_SESSION_HANDLE, hKey: CK_OBJECT_HANDLE) -> None:
    ops.digest_key(hSession, hKey)


def C_DeriveKey(
    hSession: CK_SESSION_HANDLE, pMechanism: CK_MECHANISM_PTR, hBaseKey: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR, ulAttributeCount: CK_ULONG, phKey: CK_OBJECT_HANDLE_PTR,
) -> None:
    require(pMechanism, phKey)
    args = read_mechanism(pMechanism)
    assert args is not None
    handle = derive.derive_key(hSession, args, hBaseKey, read_template(pTemplate, ulAttributeCount))
    try:
        write_ulong(phKey, handle)
    except PKCS11Error:
        access.discard_copy(hSession, handle)  # no key the host cannot know of
        raise


MAX_RANDOM = 1024 * 1024  # bytes one C_GenerateRandom gives (KMS gives 1024 a request)


def C_GenerateRandom(
    hSession: CK_SESSION_HANDLE, RandomData: CK_BYTE_PTR, ulRandomLen: CK_ULONG,
) -> None:
    if ulRandomLen:
        require(RandomData)
    if ulRandomLen > MAX_RANDOM:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, f"{ulRandomLen} random bytes in one call")
    data = random.generate_random(hSession, ulRandomLen)
    try:
        write_data(RandomData, data)
    finally:
        wipe(data)


def C_SeedRandom(
    hSession: CK_SESSION_HANDLE, pSeed: CK_BYTE_PTR, ulSeedLen: CK_ULONG,
) -> None:
    random.seed_random(hSession)


__all__ = [name for name in dir() if name.startswith("C_")]
