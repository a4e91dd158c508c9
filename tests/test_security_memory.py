"""Secrets in memory (docs/security.md, "Secrets in memory"): decrypted plaintext and random bytes
are held in buffers the module zeroes once the host has them, or once the operation that
computed them ends without delivering them (cancelled, retried with other data, its session
closed).

Python host in this process: python-pkcs11 initialises the library, a raw cffi client makes the
calls. The module's own buffers are observed, never replaced: the result waiting in the
session's operation after CKR_BUFFER_TOO_SMALL, and (for C_GenerateRandom) the buffer
core/random.py returns, caught with sys.setprofile as the function returns it.
"""

from __future__ import annotations

import gc
import os
import sys

import p11raw
import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from pkcs11_kms.ck import CKA, CKG, CKM, CKO, CKR, CKZ
from pkcs11_kms.core import random as core_random
from pkcs11_kms.core.mechanisms import Kind
from pkcs11_kms.core.module import module

PLAINTEXT = b"pkcs11-kms plaintext " + os.urandom(8).hex().encode()


@pytest.fixture(scope="module")
def raw(module_path, acceptance_config):
    os.environ["PKCS11_KMS_CONFIG"] = acceptance_config
    library = pkcs11.lib(module_path)
    library.reinitialize()  # another test module may have loaded it with another config
    yield p11raw.load(module_path)
    os.environ.pop("PKCS11_KMS_CONFIG", None)


@pytest.fixture
def session(raw):
    ffi, lib = raw
    handle = ffi.new("CK_SESSION_HANDLE *")
    assert lib.C_OpenSession(0, 4, ffi.NULL, ffi.NULL, handle) == CKR.OK  # CKF_SERIAL_SESSION
    yield handle[0]
    lib.C_CloseSession(handle[0])  # CKR_SESSION_HANDLE_INVALID when the test closed it


@pytest.fixture(scope="module")
def ciphertext(seeded):
    public = serialization.load_der_public_key(seeded["decrypt"].public_der)
    return public.encrypt(PLAINTEXT, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(),
                                                  None))


def decrypt_key(raw, session) -> int:
    ffi, lib = raw
    label = b"decrypt"
    template = ffi.new("CK_ATTRIBUTE[2]")
    klass = ffi.new("CK_OBJECT_CLASS *", CKO.PRIVATE_KEY)
    text = ffi.new("char[]", label)
    template[0] = {"type": CKA.CLASS, "pValue": klass, "ulValueLen": ffi.sizeof("CK_OBJECT_CLASS")}
    template[1] = {"type": CKA.LABEL, "pValue": text, "ulValueLen": len(label)}
    found, count = ffi.new("CK_OBJECT_HANDLE[2]"), ffi.new("CK_ULONG *")
    assert lib.C_FindObjectsInit(session, template, 2) == CKR.OK
    assert lib.C_FindObjects(session, found, 2, count) == CKR.OK
    assert lib.C_FindObjectsFinal(session) == CKR.OK
    assert count[0] == 1
    return int(found[0])


def decrypt_init(raw, session) -> None:
    ffi, lib = raw
    params = ffi.new("CK_RSA_PKCS_OAEP_PARAMS *", {"hashAlg": CKM.SHA256, "mgf": CKG.MGF1_SHA256,
                                                    "source": CKZ.DATA_SPECIFIED})
    mechanism = ffi.new("CK_MECHANISM *", {"mechanism": CKM.RSA_PKCS_OAEP, "pParameter": params,
                                           "ulParameterLen": ffi.sizeof("CK_RSA_PKCS_OAEP_PARAMS")})
    assert lib.C_DecryptInit(session, mechanism, decrypt_key(raw, session)) == CKR.OK


def decrypt(raw, session, data: bytes, capacity: int, multipart: bool) -> tuple[int, bytes]:
    """C_Decrypt, or C_DecryptUpdate (once) then C_DecryptFinal, into `capacity` bytes."""
    ffi, lib = raw
    out, length = ffi.new("CK_BYTE[]", max(capacity, 1)), ffi.new("CK_ULONG *", capacity)
    if not multipart:
        rv = lib.C_Decrypt(session, data, len(data), out, length)
    else:
        if data:
            none = ffi.new("CK_ULONG *", 4096)
            assert lib.C_DecryptUpdate(session, data, len(data), ffi.new("CK_BYTE[4096]"),
                                       none) == CKR.OK
        rv = lib.C_DecryptFinal(session, out, length)
    return rv, bytes(ffi.buffer(out, length[0])) if rv == CKR.OK else b""


def waiting(session) -> bytearray:
    """The plaintext the module keeps for the retry after CKR_BUFFER_TOO_SMALL."""
    result = module().sessions[session].operations[Kind.DECRYPT].result
    assert isinstance(result, bytearray), type(result)  # bytes could not be cleared
    assert bytes(result) == PLAINTEXT
    return result


def cleared(buffer: bytearray) -> bool:
    return len(buffer) > 0 and buffer == bytearray(len(buffer))


def no_module_object_holds(secret: bytes) -> list[str]:
    """Objects of the module's own classes with an attribute holding `secret`."""
    holders = []
    for obj in gc.get_objects():
        owner = getattr(type(obj), "__module__", None)
        if not isinstance(owner, str) or not owner.startswith("pkcs11_kms"):
            continue
        values = getattr(obj, "__dict__", {}).values()
        if any(isinstance(v, (bytes, bytearray)) and secret in v for v in values):
            holders.append(type(obj).__qualname__)
    return holders


@pytest.mark.parametrize("multipart", [False, True], ids=["C_Decrypt", "C_DecryptFinal"])
def test_delivered_plaintext_is_cleared(raw, session, ciphertext, multipart):
    decrypt_init(raw, session)
    rv, _ = decrypt(raw, session, ciphertext, 1, multipart)
    assert rv == CKR.BUFFER_TOO_SMALL
    held = waiting(session)
    rv, plaintext = decrypt(raw, session, b"" if multipart else ciphertext, 512, multipart)
    assert rv == CKR.OK and plaintext == PLAINTEXT  # the host has it ...
    assert cleared(held)  # ... and the module's copy is zeroes
    assert Kind.DECRYPT not in module().sessions[session].operations
    assert no_module_object_holds(PLAINTEXT) == []


def _close(raw, session, ciphertext):
    assert raw[1].C_CloseSession(session) == CKR.OK


def _cancel(raw, session, ciphertext):
    assert raw[1].C_DecryptInit(session, raw[0].NULL, 0) == CKR.OK


def _other_data(raw, session, ciphertext):
    other = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    assert decrypt(raw, session, other, 512, False)[0] == CKR.ARGUMENTS_BAD


@pytest.mark.parametrize("end", [_close, _cancel, _other_data],
                         ids=["session closed", "cancelled", "retried with other data"])
def test_undelivered_plaintext_is_cleared_when_the_operation_ends(raw, session, ciphertext, end):
    decrypt_init(raw, session)
    assert decrypt(raw, session, ciphertext, 1, False)[0] == CKR.BUFFER_TOO_SMALL
    held = waiting(session)
    end(raw, session, ciphertext)
    assert cleared(held)
    assert no_module_object_holds(PLAINTEXT) == []


def test_random_bytes_are_cleared_once_delivered(raw, session):
    ffi, lib = raw
    length = 2500  # three KMS GenerateRandom calls
    made: list[object] = []
    code = core_random.generate_random.__code__

    def watch(frame, event, arg):
        if event == "return" and frame.f_code is code:
            made.append(arg)

    out = ffi.new("CK_BYTE[]", length)
    previous = sys.getprofile()
    sys.setprofile(watch)  # this thread: the raw client's call runs the module here
    try:
        rv = lib.C_GenerateRandom(session, out, length)
    finally:
        sys.setprofile(previous)
    assert rv == CKR.OK
    assert len(made) == 1, made
    [buffer] = made
    assert isinstance(buffer, bytearray) and len(buffer) == length
    delivered = bytes(ffi.buffer(out, length))
    assert delivered.count(0) < length // 16  # the host got random bytes ...
    assert cleared(buffer)  # ... and the module's buffer is zeroes
