"""Conformance of the cryptographic operations (PKCS#11 v3.0 §5.8-5.19): encrypt, decrypt, digest,
sign, verify, random, and the functions the module does not support. The rules of every
operation: one active operation of a kind per session (CKR_OPERATION_ACTIVE, and the active one
goes on); CKR_OPERATION_NOT_INITIALIZED without one; C_*Init with a NULL mechanism ends it; the
§5.2 two-call convention, where a length query and CKR_BUFFER_TOO_SMALL keep the operation and
any other error ends it. (KMS errors, input caps, OAEP parameters and the digests' values:
tests/test_operation_states.py.)"""

from __future__ import annotations

import hashlib
import os

import pytest
from conformance import UNSUPPORTED, p11, session, verify_ecdsa  # noqa: F401
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from pkcs11_kms.ck import CKG, CKM, CKO, CKR

MESSAGE = b"conformance " * 20
SECRET = os.urandom(32)


def oaep(p11):  # type: ignore[no-untyped-def]
    """CKM_RSA_PKCS_OAEP with SHA-256 and MGF1-SHA-256, no label."""
    params = p11.ffi.new("CK_RSA_PKCS_OAEP_PARAMS *",
                         [CKM.SHA256, CKG.MGF1_SHA256, 1, p11.ffi.NULL, 0])
    p11._keep.append(params)
    return p11.mechanism(CKM.RSA_PKCS_OAEP, params)


def encrypted(seeded) -> bytes:  # type: ignore[no-untyped-def]
    """SECRET encrypted by cryptography under the decrypt key's public key."""
    public = serialization.load_der_public_key(seeded["decrypt"].public_der)
    scheme = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    return public.encrypt(SECRET, scheme)  # type: ignore[union-attr]


def out(p11, size: int = 512):  # type: ignore[no-untyped-def]
    return p11.ffi.new("unsigned char[]", size), p11.ffi.new("CK_ULONG *", size)


def ecdsa_signature(p11, s) -> bytes:  # type: ignore[no-untyped-def]
    """MESSAGE signed with CKM_ECDSA_SHA256 by the P-256 key (the caller checks it)."""
    assert p11.lib.C_SignInit(s, p11.mechanism(CKM.ECDSA_SHA256), p11.key(s, "ec")) == CKR.OK
    buf, n = out(p11)
    assert p11.lib.C_Sign(s, MESSAGE, len(MESSAGE), buf, n) == CKR.OK
    return p11.read(buf, n[0])


# kind -> (its C_*Init, its mechanism, the key it uses, or None for digests). Verify and encrypt
# use the public key object.
KINDS = {
    "sign": ("C_SignInit", lambda p11: p11.mechanism(CKM.ECDSA_SHA256), "ec"),
    "verify": ("C_VerifyInit", lambda p11: p11.mechanism(CKM.ECDSA_SHA256), "ec"),
    "encrypt": ("C_EncryptInit", oaep, "oaep"),
    "decrypt": ("C_DecryptInit", oaep, "oaep"),
    "digest": ("C_DigestInit", lambda p11: p11.mechanism(CKM.SHA256), None),
}
CONTINUATIONS = {
    "sign": ["C_Sign", "C_SignUpdate", "C_SignFinal"],
    "verify": ["C_Verify", "C_VerifyUpdate", "C_VerifyFinal"],
    "encrypt": ["C_Encrypt", "C_EncryptUpdate", "C_EncryptFinal"],
    "decrypt": ["C_Decrypt", "C_DecryptUpdate", "C_DecryptFinal"],
    "digest": ["C_Digest", "C_DigestUpdate", "C_DigestFinal", "C_DigestKey"],
}


def init(p11, s, kind: str, mechanism=None) -> int:  # type: ignore[no-untyped-def]
    function, make, key = KINDS[kind]
    m = make(p11) if mechanism is None else mechanism
    cls = CKO.PUBLIC_KEY if kind in ("verify", "encrypt") else CKO.PRIVATE_KEY
    args = (s, m) if key is None else (s, m, p11.key(s, key, cls))
    return getattr(p11.lib, function)(*args)


def finish(p11, s, kind: str, seeded) -> None:  # type: ignore[no-untyped-def]
    """Completes the active operation of `kind` with a single-part call, checking its result
    independently of the module."""
    buf, n = out(p11)
    lib = p11.lib
    if kind == "sign":
        assert lib.C_Sign(s, MESSAGE, len(MESSAGE), buf, n) == CKR.OK
        verify_ecdsa(seeded["ec-sign"].public_der, p11.read(buf, n[0]), MESSAGE)
    elif kind == "verify":
        other = p11.open()
        signature = ecdsa_signature(p11, other)
        verify_ecdsa(seeded["ec-sign"].public_der, signature, MESSAGE)
        assert lib.C_CloseSession(other) == CKR.OK
        assert lib.C_Verify(s, MESSAGE, len(MESSAGE), signature, len(signature)) == CKR.OK
    elif kind == "encrypt":
        assert lib.C_Encrypt(s, SECRET, len(SECRET), buf, n) == CKR.OK and n[0] == 384
        assert init(p11, s, "decrypt") == CKR.OK  # KMS decrypts what the module encrypted
        ciphertext, n[0] = p11.read(buf, 384), 512
        assert lib.C_Decrypt(s, ciphertext, 384, buf, n) == CKR.OK
        assert p11.read(buf, n[0]) == SECRET
    elif kind == "decrypt":
        ciphertext = encrypted(seeded)
        assert lib.C_Decrypt(s, ciphertext, len(ciphertext), buf, n) == CKR.OK
        assert p11.read(buf, n[0]) == SECRET
    else:
        assert lib.C_Digest(s, MESSAGE, len(MESSAGE), buf, n) == CKR.OK
        assert p11.read(buf, n[0]) == hashlib.sha256(MESSAGE).digest()


def call(p11, s, name: str) -> int:
    """A continuation function with valid arguments: 32 bytes of input, a 512-byte output."""
    ffi = p11.ffi
    args: list[object] = [s]
    for kind in ffi.typeof(getattr(p11.lib, name)).args[1:]:
        if kind.cname == "unsigned char *":
            args.append(ffi.new("unsigned char[512]"))
        elif kind.cname == "unsigned long *":
            args.append(ffi.new("CK_ULONG *", 512))
        else:
            args.append(32 if name != "C_DigestKey" else p11.key(s, "rsa"))
    return getattr(p11.lib, name)(*args)


@pytest.mark.parametrize("name", [n for names in CONTINUATIONS.values() for n in names])
def test_no_operation_is_not_initialized(p11, session, name):
    """§5.8.2-5.8.4, §5.10.2-4, §5.12.2-5, §5.13.2-4, §5.15.2-4: every call after C_*Init, made
    without it, is CKR_OPERATION_NOT_INITIALIZED."""
    assert call(p11, session, name) == CKR.OPERATION_NOT_INITIALIZED


@pytest.mark.parametrize("kind", KINDS)
def test_second_init_is_operation_active_and_the_first_goes_on(p11, session, seeded, kind):
    """§5.1.6 CKR_OPERATION_ACTIVE and §5.8.1, §5.10.1, §5.12.1, §5.13.1, §5.15.1: a C_*Init while
    an operation of that kind is active fails, and the active operation is untouched (§5: a
    failed call leaves the token as it was)."""
    assert init(p11, session, kind) == CKR.OK
    assert init(p11, session, kind) == CKR.OPERATION_ACTIVE
    finish(p11, session, kind, seeded)
    assert call(p11, session, CONTINUATIONS[kind][0]) == CKR.OPERATION_NOT_INITIALIZED


@pytest.mark.parametrize("kind", KINDS)
def test_null_mechanism_ends_the_operation(p11, session, seeded, kind):
    """v3.0 §5.8.1, §5.10.1, §5.12.1, §5.13.1, §5.15.1: C_*Init with pMechanism NULL_PTR ends the
    active operation; a new one can start."""
    assert init(p11, session, kind) == CKR.OK
    assert init(p11, session, kind, p11.ffi.NULL) == CKR.OK
    for name in CONTINUATIONS[kind][:3]:
        assert call(p11, session, name) == CKR.OPERATION_NOT_INITIALIZED, name
    assert init(p11, session, kind) == CKR.OK
    finish(p11, session, kind, seeded)


@pytest.mark.parametrize("kind, name", [
    (kind, name) for kind, names in CONTINUATIONS.items()
    for name in names if name != "C_DigestKey"])
def test_null_pointers_are_arguments_bad_and_end_the_operation(p11, session, kind, name):
    """§5.1.6: a NULL pointer where the call needs one (input with a length, an output length) is
    CKR_ARGUMENTS_BAD; like any error but CKR_BUFFER_TOO_SMALL it ends the active operation
    (§5.8.2-4, §5.10.2-4, §5.12.2-5, §5.13.2-4, §5.15.2-4)."""
    assert init(p11, session, kind) == CKR.OK
    args = [session] + [16 if a == 0 else a for a in p11.zero_args(name)[1:]]
    assert getattr(p11.lib, name)(*args) == CKR.ARGUMENTS_BAD
    assert call(p11, session, CONTINUATIONS[kind][0]) == CKR.OPERATION_NOT_INITIALIZED


@pytest.mark.parametrize("kind", ["sign", "verify", "encrypt", "decrypt"])
def test_init_key_and_mechanism_errors(p11, session, kind):
    """§5.8.1, §5.10.1, §5.13.1, §5.15.1: a handle that is no key is CKR_KEY_HANDLE_INVALID; a
    mechanism the token lacks, or one that does not do this function, CKR_MECHANISM_INVALID; a key
    whose CKA_SIGN/VERIFY/ENCRYPT/DECRYPT is false, CKR_KEY_FUNCTION_NOT_PERMITTED. No operation
    starts."""
    function, make, key = KINDS[kind]
    lib, m = p11.lib, make(p11)
    init_call = getattr(lib, function)
    for handle in (0, 987654321):
        assert init_call(session, m, handle) == CKR.KEY_HANDLE_INVALID
    assert init_call(session, p11.mechanism(CKM.AES_CBC), p11.key(session, key)) == (
        CKR.MECHANISM_INVALID)
    wrong_function = CKM.RSA_PKCS_OAEP if kind in ("sign", "verify") else CKM.SHA256_RSA_PKCS
    params = oaep(p11) if wrong_function == CKM.RSA_PKCS_OAEP else None
    other_key = p11.key(session, "rsa" if kind in ("sign", "verify") else "oaep")
    assert init_call(session, params or p11.mechanism(wrong_function), other_key) == (
        CKR.MECHANISM_INVALID)
    mechanism, holder = {"sign": (CKM.SHA256_RSA_PKCS, "oaep"),
                         "verify": (CKM.SHA256_RSA_PKCS, "oaep"),
                         "encrypt": (CKM.RSA_PKCS_OAEP, "rsa"),
                         "decrypt": (CKM.RSA_PKCS_OAEP, "rsa")}[kind]
    m = oaep(p11) if mechanism == CKM.RSA_PKCS_OAEP else p11.mechanism(mechanism)
    for cls in (CKO.PRIVATE_KEY, CKO.PUBLIC_KEY):
        assert init_call(session, m, p11.key(session, holder, cls)) == (
            CKR.KEY_FUNCTION_NOT_PERMITTED), cls
    assert call(p11, session, CONTINUATIONS[kind][0]) == CKR.OPERATION_NOT_INITIALIZED


def pss(p11, hash_alg, mgf, salt, size=None):  # type: ignore[no-untyped-def]
    params = p11.ffi.new("CK_RSA_PKCS_PSS_PARAMS *", [hash_alg, mgf, salt])
    p11._keep.append(params)
    m = p11.mechanism(CKM.SHA256_RSA_PKCS_PSS, params)
    if size is not None:
        m.ulParameterLen = size
    return m


def test_mechanism_parameter_errors(p11, session, seeded):
    """§5.13.1 and the mechanisms' parameters (v3.0 Current Mechanisms §2.1.10, §2.1.8, §2.3.6):
    a parameter of the wrong size or with values the mechanism cannot take, or a parameter where
    the mechanism has none, is CKR_MECHANISM_PARAM_INVALID, and no operation starts."""
    ffi, lib = p11.ffi, p11.lib
    rsa, ec = p11.key(session, "rsa"), p11.key(session, "ec")
    extra = ffi.new("CK_ULONG *", 1)
    p11._keep.append(extra)
    cases = [
        (pss(p11, CKM.SHA256, CKG.MGF1_SHA256, 32, size=8), rsa),  # short structure
        (pss(p11, CKM.SHA384, CKG.MGF1_SHA384, 48), rsa),  # another hash than the mechanism's
        (pss(p11, CKM.SHA256, CKG.MGF1_SHA1, 32), rsa),  # KMS: MGF1 over the same hash
        (pss(p11, CKM.SHA256, CKG.MGF1_SHA256, 20), rsa),  # KMS: a salt as long as the hash
        (p11.mechanism(CKM.ECDSA_SHA256, extra), ec),  # ECDSA takes no parameter
        (p11.mechanism(CKM.SHA256_RSA_PKCS, extra), rsa),
    ]
    for m, key in cases:
        assert lib.C_SignInit(session, m, key) == CKR.MECHANISM_PARAM_INVALID
    assert lib.C_DigestInit(session, p11.mechanism(CKM.SHA256, extra)) == (
        CKR.MECHANISM_PARAM_INVALID)
    assert call(p11, session, "C_Sign") == CKR.OPERATION_NOT_INITIALIZED
    assert call(p11, session, "C_Digest") == CKR.OPERATION_NOT_INITIALIZED
    # The parameters KMS takes sign, and cryptography verifies the signature.
    assert lib.C_SignInit(session, pss(p11, CKM.SHA256, CKG.MGF1_SHA256, 32), rsa) == CKR.OK
    buf, n = out(p11)
    assert lib.C_Sign(session, MESSAGE, len(MESSAGE), buf, n) == CKR.OK and n[0] == 256
    public = serialization.load_der_public_key(seeded["web-tls"].public_der)
    public.verify(p11.read(buf, 256), MESSAGE,  # type: ignore[union-attr, call-arg]
                  padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())


def test_digest_key_handle(p11, session):
    """§5.12.4: C_DigestKey with a handle that is no key is CKR_KEY_HANDLE_INVALID (and, as any
    error, ends the digest)."""
    assert init(p11, session, "digest") == CKR.OK
    assert p11.lib.C_DigestKey(session, 987654321) == CKR.KEY_HANDLE_INVALID
    assert call(p11, session, "C_DigestUpdate") == CKR.OPERATION_NOT_INITIALIZED


@pytest.mark.parametrize("kind, size", [("sign", 64), ("encrypt", 384), ("digest", 32)])
def test_two_call_convention_single_part(p11, session, seeded, kind, size):
    """§5.2 with §5.8.2, §5.12.2, §5.13.2: NULL output asks for the length (CKR_OK), a short
    buffer is CKR_BUFFER_TOO_SMALL with the length set; both keep the operation, which then
    completes; a NULL length pointer is CKR_ARGUMENTS_BAD and ends it."""
    lib, ffi = p11.lib, p11.ffi
    single = getattr(lib, CONTINUATIONS[kind][0])
    data = SECRET if kind == "encrypt" else MESSAGE
    assert init(p11, session, kind) == CKR.OK
    n = ffi.new("CK_ULONG *", 0)
    assert single(session, data, len(data), ffi.NULL, n) == CKR.OK and n[0] == size
    buf, n[0] = ffi.new("unsigned char[]", size), size - 1
    assert single(session, data, len(data), buf, n) == CKR.BUFFER_TOO_SMALL and n[0] == size
    finish(p11, session, kind, seeded)
    assert init(p11, session, kind) == CKR.OK
    assert single(session, data, len(data), buf, ffi.NULL) == CKR.ARGUMENTS_BAD
    assert single(session, data, len(data), buf, n) == CKR.OPERATION_NOT_INITIALIZED


@pytest.mark.parametrize("kind, size", [("sign", 64), ("encrypt", 384), ("digest", 32)])
def test_two_call_convention_final(p11, session, seeded, kind, size):
    """§5.2 with §5.8.4, §5.12.5, §5.13.4: the same for C_*Final after C_*Update; the result equals
    the single-part one (checked independently)."""
    lib, ffi = p11.lib, p11.ffi
    update, final = (getattr(lib, n) for n in CONTINUATIONS[kind][1:3])
    data = SECRET if kind == "encrypt" else MESSAGE
    assert init(p11, session, kind) == CKR.OK
    for i in range(0, len(data), 10):
        args = (session, data[i:i + 10], len(data[i:i + 10]))
        if kind == "encrypt":  # one RSA block: nothing comes out before C_EncryptFinal
            n = ffi.new("CK_ULONG *", 512)
            assert update(*args, ffi.new("unsigned char[512]"), n) == CKR.OK and n[0] == 0
        else:
            assert update(*args) == CKR.OK
    n = ffi.new("CK_ULONG *", 0)
    assert final(session, ffi.NULL, n) == CKR.OK and n[0] == size
    buf, n[0] = ffi.new("unsigned char[]", size), size - 1
    assert final(session, buf, n) == CKR.BUFFER_TOO_SMALL and n[0] == size
    assert final(session, buf, n) == CKR.OK and n[0] == size
    result = p11.read(buf, size)
    assert final(session, buf, n) == CKR.OPERATION_NOT_INITIALIZED
    if kind == "sign":
        verify_ecdsa(seeded["ec-sign"].public_der, result, data)
    elif kind == "digest":
        assert result == hashlib.sha256(data).digest()
    else:
        assert init(p11, session, "decrypt") == CKR.OK
        out_buf, n[0] = ffi.new("unsigned char[512]"), 512
        assert lib.C_Decrypt(session, result, size, out_buf, n) == CKR.OK
        assert p11.read(out_buf, n[0]) == data


def test_data_errors_end_the_operation(p11, session):
    """§5.8.2, §5.10.2: C_Encrypt and C_Decrypt end the operation on every error but
    CKR_BUFFER_TOO_SMALL: too much plaintext is CKR_DATA_LEN_RANGE, a ciphertext of the wrong
    length CKR_ENCRYPTED_DATA_LEN_RANGE, one that does not decrypt CKR_ENCRYPTED_DATA_INVALID."""
    lib = p11.lib
    buf, n = out(p11)
    too_long = b"x" * 319  # RSA-3072 with SHA-256 OAEP: at most 384 - 2 * 32 - 2 = 318 bytes
    assert init(p11, session, "encrypt") == CKR.OK
    assert lib.C_Encrypt(session, too_long, len(too_long), buf, n) == CKR.DATA_LEN_RANGE
    assert lib.C_Encrypt(session, b"x", 1, buf, n) == CKR.OPERATION_NOT_INITIALIZED
    for ciphertext, rv in ((b"\x01" * 10, CKR.ENCRYPTED_DATA_LEN_RANGE),
                           (b"\x01" * 384, CKR.ENCRYPTED_DATA_INVALID)):
        assert init(p11, session, "decrypt") == CKR.OK
        n[0] = 512
        assert lib.C_Decrypt(session, ciphertext, len(ciphertext), buf, n) == rv
        assert lib.C_Decrypt(session, ciphertext, len(ciphertext), buf, n) == (
            CKR.OPERATION_NOT_INITIALIZED)


def test_verify_ends_the_operation_whatever_the_result(p11, session, seeded):
    """§5.15.2, §5.15.4: C_Verify and C_VerifyFinal always end the operation: after
    CKR_SIGNATURE_INVALID too. A multi-part verification of a good signature is CKR_OK."""
    lib = p11.lib
    signature = ecdsa_signature(p11, session)
    verify_ecdsa(seeded["ec-sign"].public_der, signature, MESSAGE)
    bad = bytes([signature[0] ^ 1]) + signature[1:]
    assert init(p11, session, "verify") == CKR.OK
    assert lib.C_Verify(session, MESSAGE, len(MESSAGE), bad, len(bad)) == CKR.SIGNATURE_INVALID
    assert lib.C_Verify(session, MESSAGE, len(MESSAGE), signature, len(signature)) == (
        CKR.OPERATION_NOT_INITIALIZED)
    for sig, rv in ((bad, CKR.SIGNATURE_INVALID), (signature, CKR.OK)):
        assert init(p11, session, "verify") == CKR.OK
        assert lib.C_VerifyUpdate(session, MESSAGE[:7], 7) == CKR.OK
        assert lib.C_VerifyUpdate(session, MESSAGE[7:], len(MESSAGE) - 7) == CKR.OK
        assert lib.C_VerifyFinal(session, sig, len(sig)) == rv
        assert lib.C_VerifyFinal(session, sig, len(sig)) == CKR.OPERATION_NOT_INITIALIZED


def test_operations_of_other_kinds_are_independent(p11, session, seeded):
    """§5.1.6 CKR_OPERATION_ACTIVE leaves it to the token which operations may run together: here
    each kind has its own, and ending one leaves the others."""
    for kind in ("sign", "digest", "decrypt"):
        assert init(p11, session, kind) == CKR.OK
    assert init(p11, session, "sign", p11.ffi.NULL) == CKR.OK
    finish(p11, session, "digest", seeded)
    finish(p11, session, "decrypt", seeded)


def test_generate_random(p11, session):
    """§5.19.2: any length (KMS gives at most 1,024 bytes a call), 0 included; a NULL buffer with a
    length is CKR_ARGUMENTS_BAD. §5.19.1: C_SeedRandom with a NULL seed and a length may be either
    of its applicable errors (§5.1.7)."""
    ffi, lib = p11.ffi, p11.lib
    first, second = ffi.new("unsigned char[2500]"), ffi.new("unsigned char[2500]")
    assert lib.C_GenerateRandom(session, first, 2500) == CKR.OK
    assert lib.C_GenerateRandom(session, second, 2500) == CKR.OK
    assert p11.read(first, 2500) != p11.read(second, 2500)
    assert len(set(p11.read(first, 2500)[1500:])) > 200  # the third KMS call's bytes too
    assert lib.C_GenerateRandom(session, ffi.NULL, 0) == CKR.OK
    assert lib.C_GenerateRandom(session, ffi.NULL, 16) == CKR.ARGUMENTS_BAD
    assert lib.C_SeedRandom(session, ffi.NULL, 4) in (CKR.ARGUMENTS_BAD,
                                                      CKR.RANDOM_SEED_NOT_SUPPORTED)


OPERATION_STUBS = [n for n in UNSUPPORTED if n not in (
    "C_InitToken", "C_InitPIN", "C_SetPIN", "C_WaitForSlotEvent", "C_GetOperationState",
    "C_SetOperationState", "C_SessionCancel", "C_CreateObject", "C_SetAttributeValue")]


def test_unsupported_operations(p11, session):
    """Deviation ("no creation"): key generation, wrapping and unwrapping (§5.18),
    sign/verify with recovery (§5.13.5-6, §5.15.5-6), the dual-function calls (§5.17, and the
    token does not set CKF_DUAL_CRYPTO_OPERATIONS) and the message-based functions (§5.9, §5.11,
    §5.14, §5.16) are §5.1.6 stubs: CKR_FUNCTION_NOT_SUPPORTED, whatever the arguments."""
    got = {}
    for name in OPERATION_STUBS:
        args = p11.zero_args(name)
        args[0] = session
        got[name] = getattr(p11.lib, name)(*args)
    assert len(got) == 32
    assert [f"{n} {rv:#x}" for n, rv in got.items() if rv != CKR.FUNCTION_NOT_SUPPORTED] == []


def test_derive_key_checks_its_arguments(p11, session):
    """§5.18.5: C_DeriveKey (ECDH) with no mechanism or no output handle is CKR_ARGUMENTS_BAD."""
    args = p11.zero_args("C_DeriveKey")
    args[0] = session
    assert p11.lib.C_DeriveKey(*args) == CKR.ARGUMENTS_BAD


@pytest.mark.parametrize("kind", ["encrypt", "decrypt"])
def test_update_length_query_does_not_consume_the_input(p11, session, seeded, kind):
    """§5.2: with a NULL output buffer "all that the function does" is return the length: a
    C_EncryptUpdate or C_DecryptUpdate length query takes no input, so the same part given again
    with a buffer is counted once."""
    ffi, lib = p11.ffi, p11.lib
    update, final = (getattr(lib, n) for n in CONTINUATIONS[kind][1:3])
    data = SECRET if kind == "encrypt" else encrypted(seeded)
    assert init(p11, session, kind) == CKR.OK
    n, buf = ffi.new("CK_ULONG *", 0), ffi.new("unsigned char[512]")
    assert update(session, data, len(data), ffi.NULL, n) == CKR.OK and n[0] == 0
    n[0] = 512
    assert update(session, data, len(data), buf, n) == CKR.OK and n[0] == 0
    n[0] = 512
    assert final(session, buf, n) == CKR.OK
    result = p11.read(buf, n[0])
    if kind == "encrypt":
        assert init(p11, session, "decrypt") == CKR.OK
        n[0] = 512
        assert lib.C_Decrypt(session, result, len(result), buf, n) == CKR.OK
        result = p11.read(buf, n[0])
    assert result == SECRET


def test_raw_ecdsa_digest_lengths(p11, session, seeded):
    """CKM_ECDSA (Current Mechanisms §2.3.6) signs the caller's digest: a SHA-256 digest on P-256
    as it is, a longer one by its leftmost bits, as ECDSA does. Deviation ("ECDSA digests"): a
    20-byte (SHA-1) or other-length input is CKR_DATA_LEN_RANGE, as KMS refuses SHA-1."""
    lib = p11.lib
    public = serialization.load_der_public_key(seeded["ec-sign"].public_der)
    for algorithm in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        digest = hashlib.new(algorithm.name, MESSAGE).digest()
        assert init(p11, session, "sign", p11.mechanism(CKM.ECDSA)) == CKR.OK
        buf, n = out(p11)
        assert lib.C_Sign(session, digest, len(digest), buf, n) == CKR.OK and n[0] == 64
        r, s = (int.from_bytes(p11.read(buf, 64)[i:i + 32], "big") for i in (0, 32))
        public.verify(encode_dss_signature(r, s), digest,  # type: ignore[union-attr, call-arg]
                      ec.ECDSA(Prehashed(algorithm)))
    for size in (20, 33):
        assert init(p11, session, "sign", p11.mechanism(CKM.ECDSA)) == CKR.OK
        buf, n = out(p11)
        assert lib.C_Sign(session, b"\x01" * size, size, buf, n) == CKR.DATA_LEN_RANGE
