"""C_* functions of the cryptographic operations: sign, verify, encrypt, decrypt, random (§5.9-5.15)."""

from __future__ import annotations

from _kms_pkcs11 import ffi

from ..ck import CKM, CKR
from ..core import operations as ops
from ..core import random
from ..core.session import session
from ..errors import PKCS11Error
from ..mechanisms.params import MechanismArgs, OaepParams, PssParams
from .marshal import (
    MAX_PARAMETER,
    NULL,
    output_capacity,
    read_bytes,
    read_struct,
    require,
    write_data,
    write_ulong,
)

PSS = (CKM.RSA_PKCS_PSS, CKM.SHA256_RSA_PKCS_PSS, CKM.SHA384_RSA_PKCS_PSS, CKM.SHA512_RSA_PKCS_PSS)


def _pss(p) -> PssParams:  # type: ignore[no-untyped-def]
    return PssParams(int(p.hashAlg), int(p.mgf), int(p.sLen))


def _oaep(p) -> OaepParams:  # type: ignore[no-untyped-def]
    return OaepParams(int(p.hashAlg), int(p.mgf), int(p.source),
                      read_bytes(p.pSourceData, p.ulSourceDataLen, MAX_PARAMETER,
                                 CKR.MECHANISM_PARAM_INVALID))


# mechanism -> (the C structure of its parameter, its reader)
PARAMETERS = {
    **{m: ("CK_RSA_PKCS_PSS_PARAMS", _pss) for m in PSS},
    CKM.RSA_PKCS_OAEP: ("CK_RSA_PKCS_OAEP_PARAMS", _oaep),
}


def read_mechanism(pMechanism) -> MechanismArgs | None:  # type: ignore[no-untyped-def]
    if pMechanism == NULL:
        return None
    m = read_struct(pMechanism, "CK_MECHANISM")
    mechanism, p, length = int(m.mechanism), m.pParameter, int(m.ulParameterLen)
    known = PARAMETERS.get(mechanism)
    if known is None:
        if p == NULL:
            return MechanismArgs(mechanism, None)
        return MechanismArgs(mechanism, read_bytes(p, length, MAX_PARAMETER,
                                                   CKR.MECHANISM_PARAM_INVALID))
    struct, reader = known
    if p == NULL or length != ffi.sizeof(struct):
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, f"{struct} expected")
    return MechanismArgs(mechanism, reader(read_struct(p, struct)))


def _produce(output, out, out_len) -> None:  # type: ignore[no-untyped-def]
    """The two-call convention over a core Output (§5.2)."""
    if output.data is not None:
        write_data(out, output.data)
    write_ulong(out_len, output.length)
    if out != NULL and output.data is None:
        raise PKCS11Error(CKR.BUFFER_TOO_SMALL)


def _arguments(kind, hSession, read):  # type: ignore[no-untyped-def]
    """Reads a call's arguments; bad ones end the operation, as any error but one (§5.2)."""
    try:
        return read()
    except PKCS11Error:
        ops.end(kind, hSession)
        raise


def _single(kind, hSession, pData, ulDataLen, pOut, pulOutLen):  # type: ignore[no-untyped-def]
    def read():  # type: ignore[no-untyped-def]
        capacity = output_capacity(pOut, pulOutLen)
        return read_bytes(pData, ulDataLen), capacity

    data, capacity = _arguments(kind, hSession, read)
    _produce(ops.single(kind, hSession, data, capacity), pOut, pulOutLen)


def _update(kind, hSession, pPart, ulPartLen, pulOutLen=None):  # type: ignore[no-untyped-def]
    def read():  # type: ignore[no-untyped-def]
        if pulOutLen is not None:
            require(pulOutLen)
        return read_bytes(pPart, ulPartLen)

    ops.update(kind, hSession, _arguments(kind, hSession, read))


def _final(kind, hSession, pOut, pulOutLen):  # type: ignore[no-untyped-def]
    def read():  # type: ignore[no-untyped-def]
        return output_capacity(pOut, pulOutLen)

    _produce(ops.final(kind, hSession, _arguments(kind, hSession, read)), pOut, pulOutLen)


def _init(kind):  # type: ignore[no-untyped-def]
    def init(hSession, pMechanism, hKey):  # type: ignore[no-untyped-def]
        ops.init(kind, hSession, read_mechanism(pMechanism), hKey)

    return init


C_SignInit = _init(ops.SIGN)
C_VerifyInit = _init(ops.VERIFY)
C_EncryptInit = _init(ops.ENCRYPT)
C_DecryptInit = _init(ops.DECRYPT)


def C_Sign(hSession, pData, ulDataLen, pSignature, pulSignatureLen):  # type: ignore[no-untyped-def]
    _single(ops.SIGN, hSession, pData, ulDataLen, pSignature, pulSignatureLen)


def C_SignUpdate(hSession, pPart, ulPartLen):  # type: ignore[no-untyped-def]
    _update(ops.SIGN, hSession, pPart, ulPartLen)


def C_SignFinal(hSession, pSignature, pulSignatureLen):  # type: ignore[no-untyped-def]
    _final(ops.SIGN, hSession, pSignature, pulSignatureLen)


def _signature(pSignature, ulSignatureLen) -> bytes:  # type: ignore[no-untyped-def]
    return read_bytes(pSignature, ulSignatureLen, MAX_PARAMETER, CKR.SIGNATURE_LEN_RANGE)


def C_Verify(hSession, pData, ulDataLen, pSignature, ulSignatureLen):  # type: ignore[no-untyped-def]
    data, signature = _arguments(ops.VERIFY, hSession, lambda: (
        read_bytes(pData, ulDataLen), _signature(pSignature, ulSignatureLen)))
    ops.verify(hSession, data, signature)


def C_VerifyUpdate(hSession, pPart, ulPartLen):  # type: ignore[no-untyped-def]
    _update(ops.VERIFY, hSession, pPart, ulPartLen)


def C_VerifyFinal(hSession, pSignature, ulSignatureLen):  # type: ignore[no-untyped-def]
    signature = _arguments(ops.VERIFY, hSession, lambda: _signature(pSignature, ulSignatureLen))
    ops.verify(hSession, None, signature)


def C_Encrypt(hSession, pData, ulDataLen, pEncryptedData, pulEncryptedDataLen):  # type: ignore[no-untyped-def]
    _single(ops.ENCRYPT, hSession, pData, ulDataLen, pEncryptedData, pulEncryptedDataLen)


def _producing_update(kind, hSession, pPart, ulPartLen, pOut, pulOutLen):  # type: ignore[no-untyped-def]
    """RSA-OAEP is one block: an update produces nothing; everything comes out of the final call.
    A NULL output asks for the length only (§5.2): the part is not taken then."""
    if pOut == NULL:
        def query():  # type: ignore[no-untyped-def]
            require(pulOutLen)
            if kind not in session(hSession).operations:
                raise PKCS11Error(CKR.OPERATION_NOT_INITIALIZED, f"no {kind} operation")

        _arguments(kind, hSession, query)
    else:
        _update(kind, hSession, pPart, ulPartLen, pulOutLen)
    write_ulong(pulOutLen, 0)


def C_EncryptUpdate(hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen):  # type: ignore[no-untyped-def]
    _producing_update(ops.ENCRYPT, hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen)


def C_EncryptFinal(hSession, pLastEncryptedPart, pulLastEncryptedPartLen):  # type: ignore[no-untyped-def]
    _final(ops.ENCRYPT, hSession, pLastEncryptedPart, pulLastEncryptedPartLen)


def C_Decrypt(hSession, pEncryptedData, ulEncryptedDataLen, pData, pulDataLen):  # type: ignore[no-untyped-def]
    _single(ops.DECRYPT, hSession, pEncryptedData, ulEncryptedDataLen, pData, pulDataLen)


def C_DecryptUpdate(hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen):  # type: ignore[no-untyped-def]
    _producing_update(ops.DECRYPT, hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen)


def C_DecryptFinal(hSession, pLastPart, pulLastPartLen):  # type: ignore[no-untyped-def]
    _final(ops.DECRYPT, hSession, pLastPart, pulLastPartLen)


def C_DigestInit(hSession, pMechanism):  # type: ignore[no-untyped-def]
    ops.digest_init(hSession, read_mechanism(pMechanism))


def C_Digest(hSession, pData, ulDataLen, pDigest, pulDigestLen):  # type: ignore[no-untyped-def]
    _single(ops.DIGEST, hSession, pData, ulDataLen, pDigest, pulDigestLen)


def C_DigestUpdate(hSession, pPart, ulPartLen):  # type: ignore[no-untyped-def]
    _update(ops.DIGEST, hSession, pPart, ulPartLen)


def C_DigestFinal(hSession, pDigest, pulDigestLen):  # type: ignore[no-untyped-def]
    _final(ops.DIGEST, hSession, pDigest, pulDigestLen)


def C_DigestKey(hSession, hKey):  # type: ignore[no-untyped-def]
    ops.digest_key(hSession, hKey)


MAX_RANDOM = 1024 * 1024  # bytes one C_GenerateRandom gives (KMS gives 1024 a request)


def C_GenerateRandom(hSession, RandomData, ulRandomLen):  # type: ignore[no-untyped-def]
    if ulRandomLen:
        require(RandomData)
    if ulRandomLen > MAX_RANDOM:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, f"{ulRandomLen} random bytes in one call")
    write_data(RandomData, random.generate_random(hSession, ulRandomLen))


def C_SeedRandom(hSession, pSeed, ulSeedLen):  # type: ignore[no-untyped-def]
    random.seed_random(hSession)


__all__ = [name for name in dir() if name.startswith("C_")]
