"""Operation state and return codes through the raw C interface (PKCS#11 §5.2, §5.9-5.12)."""

from __future__ import annotations

import hashlib
import os

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

import p11raw
from keyseed import key_entries, seed_key, write_config
from pkcs11_kms.ck import CKA, CKF, CKG, CKM, CKO, CKR

MESSAGE = b"state machine " * 10


@pytest.fixture(scope="module")
def keys(kms_server):
    client = kms_server.client()
    return {
        "rsa": seed_key(client, None, "RSA_2048", "SIGN_VERIFY"),
        "ec": seed_key(client, None, "ECC_NIST_P384", "SIGN_VERIFY"),
        "oaep": seed_key(client, None, "RSA_2048", "ENCRYPT_DECRYPT"),
    }


@pytest.fixture(scope="module")
def raw(module_path, tmp_path_factory, kms_server, keys):
    entries = key_entries(keys)
    path = tmp_path_factory.mktemp("states") / "config.toml"
    # One attempt, short timeouts: an injected fault must fail the call, not be retried away.
    os.environ["PKCS11_KMS_CONFIG"] = write_config(
        path, kms_server, f'max_attempts = 1\n[[token]]\nlabel = "states"\nkeys = [{entries}]\n')
    pkcs11.lib(module_path).reinitialize()  # the library is shared with python-pkcs11's tests
    yield p11raw.load(module_path)
    os.environ.pop("PKCS11_KMS_CONFIG", None)


@pytest.fixture
def faults(kms_server):
    yield kms_server
    kms_server.clear_faults()


@pytest.fixture
def s(raw):
    ffi, lib = raw
    h = ffi.new("CK_SESSION_HANDLE *")
    assert lib.C_OpenSession(0, CKF.SERIAL_SESSION, ffi.NULL, ffi.NULL, h) == CKR.OK
    yield h[0]
    lib.C_CloseSession(h[0])


def key(raw, session, label, cls=CKO.PRIVATE_KEY):
    ffi, lib = raw
    t = ffi.new("CK_ATTRIBUTE[2]")
    c = ffi.new("CK_ULONG *", cls)
    name = ffi.new("char[]", label.encode())
    t[0].type, t[0].pValue, t[0].ulValueLen = CKA.CLASS, c, ffi.sizeof("CK_ULONG")
    t[1].type, t[1].pValue, t[1].ulValueLen = CKA.LABEL, name, len(label)
    assert lib.C_FindObjectsInit(session, t, 2) == CKR.OK
    out, n = ffi.new("CK_OBJECT_HANDLE *"), ffi.new("CK_ULONG *")
    assert lib.C_FindObjects(session, out, 1, n) == CKR.OK and n[0] == 1
    lib.C_FindObjectsFinal(session)
    return out[0]


def mech(raw, mechanism, params=None):
    ffi, _ = raw
    m = ffi.new("CK_MECHANISM *")
    m.mechanism = mechanism
    if params is not None:
        m.pParameter, m.ulParameterLen = params, ffi.sizeof(params[0])
    return m


def test_length_query_and_too_small_buffer_never_call_kms(raw, s, keys, faults):
    """A signature's length is known from the key: neither question reaches KMS."""
    ffi, lib = raw
    k = key(raw, s, "rsa")
    assert lib.C_SignInit(s, mech(raw, CKM.SHA256_RSA_PKCS), k) == CKR.OK
    n = ffi.new("CK_ULONG *")
    faults.set_faults(error_code="KMSInternalException", operations=["Sign"])
    assert lib.C_Sign(s, MESSAGE, len(MESSAGE), ffi.NULL, n) == CKR.OK  # no KMS call
    assert n[0] == 256
    small = ffi.new("CK_ULONG *", 10)
    buf = ffi.new("unsigned char[256]")
    assert lib.C_Sign(s, MESSAGE, len(MESSAGE), buf, small) == CKR.BUFFER_TOO_SMALL  # nor here
    assert small[0] == 256
    faults.clear_faults()
    assert lib.C_Sign(s, MESSAGE, len(MESSAGE), buf, n) == CKR.OK
    signature = bytes(ffi.buffer(buf, n[0]))
    serialization.load_der_public_key(keys["rsa"].public_der).verify(
        signature, MESSAGE, padding.PKCS1v15(), hashes.SHA256())
    assert lib.C_Sign(s, MESSAGE, len(MESSAGE), buf, n) == CKR.OPERATION_NOT_INITIALIZED


def oaep_ciphertext(keys, secret: bytes) -> bytes:
    public = serialization.load_der_public_key(keys["oaep"].public_der)
    return public.encrypt(secret, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(),
                                               None))


def test_too_small_buffer_keeps_the_plaintext(raw, s, keys, faults):
    """A plaintext's length is known only after KMS decrypted: CKR_BUFFER_TOO_SMALL keeps it, and
    the retry gets it without a second KMS call."""
    ffi, lib = raw
    k = key(raw, s, "oaep")
    secret = os.urandom(32)
    ct = oaep_ciphertext(keys, secret)
    params = ffi.new("CK_RSA_PKCS_OAEP_PARAMS *", [CKM.SHA256, CKG.MGF1_SHA256, 0, ffi.NULL, 0])
    assert lib.C_DecryptInit(s, mech(raw, CKM.RSA_PKCS_OAEP, params), k) == CKR.OK
    out, n = ffi.new("unsigned char[400]"), ffi.new("CK_ULONG *", 10)
    assert lib.C_Decrypt(s, ct, len(ct), out, n) == CKR.BUFFER_TOO_SMALL
    assert n[0] == 32
    faults.set_faults(error_code="KMSInternalException", operations=["Decrypt"])
    assert lib.C_Decrypt(s, ct, len(ct), out, n) == CKR.OK  # the kept plaintext
    assert bytes(ffi.buffer(out, n[0])) == secret


def test_retry_with_other_data_is_refused(raw, s, keys):
    """The retry after CKR_BUFFER_TOO_SMALL must repeat the call: other data never gets the
    first data's result."""
    ffi, lib = raw
    k = key(raw, s, "oaep")
    params = ffi.new("CK_RSA_PKCS_OAEP_PARAMS *", [CKM.SHA256, CKG.MGF1_SHA256, 0, ffi.NULL, 0])
    assert lib.C_DecryptInit(s, mech(raw, CKM.RSA_PKCS_OAEP, params), k) == CKR.OK
    first, other = oaep_ciphertext(keys, b"first" * 6), oaep_ciphertext(keys, b"other" * 6)
    out, n = ffi.new("unsigned char[400]"), ffi.new("CK_ULONG *", 10)
    assert lib.C_Decrypt(s, first, len(first), out, n) == CKR.BUFFER_TOO_SMALL
    n[0] = 400
    assert lib.C_Decrypt(s, other, len(other), out, n) == CKR.ARGUMENTS_BAD
    assert lib.C_Decrypt(s, first, len(first), out, n) == CKR.OPERATION_NOT_INITIALIZED


def test_kms_failure_ends_the_operation_with_device_error(raw, s, faults):
    ffi, lib = raw
    k = key(raw, s, "ec")
    faults.set_faults(error_code="KMSInternalException", operations=["Sign"])
    assert lib.C_SignInit(s, mech(raw, CKM.ECDSA), k) == CKR.OK
    buf, n = ffi.new("unsigned char[96]"), ffi.new("CK_ULONG *", 96)
    digest = hashlib.sha384(MESSAGE).digest()
    assert lib.C_Sign(s, digest, 48, buf, n) == CKR.DEVICE_ERROR
    assert lib.C_Sign(s, digest, 48, buf, n) == CKR.OPERATION_NOT_INITIALIZED


# C_Sign may not return key errors (they belong to C_SignInit, §5.11): a key KMS refuses at Sign
# time is CKR_FUNCTION_FAILED, and ulDeviceError names the KMS error (kms/errors.py ERROR_TABLE).
@pytest.mark.parametrize("code, rv", [
    ("ThrottlingException", CKR.DEVICE_ERROR),
    ("DisabledException", CKR.FUNCTION_FAILED),
    ("NotFoundException", CKR.FUNCTION_FAILED),
    ("AccessDeniedException", CKR.FUNCTION_FAILED),
])
def test_kms_error_codes_map_to_ck_rv(raw, s, faults, code, rv):
    from pkcs11_kms.kms.errors import ERROR_TABLE

    ffi, lib = raw
    k = key(raw, s, "rsa")
    faults.set_faults(error_code=code, operations=["Sign"])
    assert lib.C_SignInit(s, mech(raw, CKM.SHA256_RSA_PKCS), k) == CKR.OK
    buf, n = ffi.new("unsigned char[256]"), ffi.new("CK_ULONG *", 256)
    assert lib.C_Sign(s, MESSAGE, len(MESSAGE), buf, n) == rv
    info = ffi.new("CK_SESSION_INFO *")
    assert lib.C_GetSessionInfo(s, info) == CKR.OK
    assert info.ulDeviceError == ERROR_TABLE[code][1]


def test_operation_active_and_null_mechanism_cancels(raw, s):
    ffi, lib = raw
    k = key(raw, s, "rsa")
    assert lib.C_SignInit(s, mech(raw, CKM.SHA256_RSA_PKCS), k) == CKR.OK
    assert lib.C_SignInit(s, mech(raw, CKM.SHA256_RSA_PKCS), k) == CKR.OPERATION_ACTIVE
    assert lib.C_SignInit(s, ffi.NULL, k) == CKR.OK  # pkcs11-provider cancels like this
    assert lib.C_SignUpdate(s, b"x", 1) == CKR.OPERATION_NOT_INITIALIZED
    assert lib.C_SignInit(s, mech(raw, CKM.SHA256_RSA_PKCS), k) == CKR.OK
    assert lib.C_SignInit(s, ffi.NULL, 0) == CKR.OK


def test_multipart_equals_single_part_and_final_length_query(raw, s, keys):
    ffi, lib = raw
    k = key(raw, s, "rsa")  # PKCS#1 v1.5 is deterministic: both paths give the same bytes
    n = ffi.new("CK_ULONG *", 256)
    one = ffi.new("unsigned char[256]")
    assert lib.C_SignInit(s, mech(raw, CKM.SHA384_RSA_PKCS), k) == CKR.OK
    assert lib.C_Sign(s, MESSAGE, len(MESSAGE), one, n) == CKR.OK
    assert lib.C_SignInit(s, mech(raw, CKM.SHA384_RSA_PKCS), k) == CKR.OK
    for i in range(0, len(MESSAGE), 7):
        assert lib.C_SignUpdate(s, MESSAGE[i:i + 7], len(MESSAGE[i:i + 7])) == CKR.OK
    q = ffi.new("CK_ULONG *")
    assert lib.C_SignFinal(s, ffi.NULL, q) == CKR.OK and q[0] == 256
    two = ffi.new("unsigned char[256]")
    assert lib.C_SignFinal(s, two, q) == CKR.OK
    assert bytes(ffi.buffer(one, 256)) == bytes(ffi.buffer(two, 256))


def test_key_and_mechanism_mismatches(raw, s):
    ffi, lib = raw
    rsa, ec, oaep = key(raw, s, "rsa"), key(raw, s, "ec"), key(raw, s, "oaep")
    rsa_public = key(raw, s, "rsa", CKO.PUBLIC_KEY)
    params = ffi.new("CK_RSA_PKCS_OAEP_PARAMS *", [CKM.SHA256, CKG.MGF1_SHA256, 1, ffi.NULL, 0])
    assert lib.C_DecryptInit(s, mech(raw, CKM.RSA_PKCS_OAEP, params), rsa) == (
        CKR.KEY_FUNCTION_NOT_PERMITTED)
    assert lib.C_SignInit(s, mech(raw, CKM.SHA256_RSA_PKCS), ec) == CKR.KEY_TYPE_INCONSISTENT
    assert lib.C_SignInit(s, mech(raw, CKM.SHA256_RSA_PKCS), rsa_public) == (
        CKR.KEY_FUNCTION_NOT_PERMITTED)
    assert lib.C_DecryptInit(s, mech(raw, CKM.RSA_PKCS), oaep) == CKR.MECHANISM_INVALID
    assert lib.C_DecryptInit(s, mech(raw, CKM.RSA_X_509), oaep) == CKR.MECHANISM_INVALID
    assert lib.C_SignInit(s, mech(raw, CKM.SHA1_RSA_PKCS), rsa) == CKR.MECHANISM_INVALID
    assert lib.C_SignInit(s, mech(raw, CKM.SHA256_RSA_PKCS), 0) == CKR.KEY_HANDLE_INVALID
    assert lib.C_VerifyInit(s, mech(raw, CKM.SHA256_RSA_PKCS), rsa) == CKR.OK  # private key verifies
    assert lib.C_Verify(s, MESSAGE, len(MESSAGE), b"\x00" * 255, 255) == CKR.SIGNATURE_LEN_RANGE
    assert lib.C_VerifyInit(s, mech(raw, CKM.SHA256_RSA_PKCS), rsa) == CKR.OK
    assert lib.C_Verify(s, MESSAGE, len(MESSAGE), b"\x00" * 256, 256) == CKR.SIGNATURE_INVALID
    # A PSS mechanism without its parameter, or with a short one.
    assert lib.C_SignInit(s, mech(raw, CKM.SHA256_RSA_PKCS_PSS), rsa) == CKR.MECHANISM_PARAM_INVALID


@pytest.mark.parametrize("hash_alg, algorithm", [
    (0, hashes.SHA1()), (CKM.SHA_1, hashes.SHA1()), (CKM.SHA256, hashes.SHA256())])
def test_oaep_without_mgf(raw, s, keys, hash_alg, algorithm):
    """pkcs11-provider 1.0 sends mgf=0: with hashAlg=0 when the user named no OAEP digest (SHA-1),
    and with the named digest when the user named no MGF1 digest (OpenSSL's MGF1 then uses it)."""
    ffi, lib = raw
    k = key(raw, s, "oaep")
    secret = os.urandom(32)
    public = serialization.load_der_public_key(keys["oaep"].public_der)
    ct = public.encrypt(secret, padding.OAEP(padding.MGF1(algorithm), algorithm, None))
    params = ffi.new("CK_RSA_PKCS_OAEP_PARAMS *", [hash_alg, 0, 0, ffi.NULL, 0])
    assert lib.C_DecryptInit(s, mech(raw, CKM.RSA_PKCS_OAEP, params), k) == CKR.OK
    n = ffi.new("CK_ULONG *")
    assert lib.C_Decrypt(s, ct, len(ct), ffi.NULL, n) == CKR.OK and n[0] >= 32  # no KMS call
    out = ffi.new("unsigned char[]", n[0])
    assert lib.C_Decrypt(s, ct, len(ct), out, n) == CKR.OK
    assert bytes(ffi.buffer(out, n[0])) == secret


def test_random_and_seed(raw, s):
    ffi, lib = raw
    buf = ffi.new("unsigned char[3000]")
    assert lib.C_GenerateRandom(s, buf, 3000) == CKR.OK
    assert len(set(bytes(buf))) > 200
    assert lib.C_SeedRandom(s, b"seed", 4) == CKR.RANDOM_SEED_NOT_SUPPORTED
    assert lib.C_GenerateRandom(0, buf, 10) == CKR.SESSION_HANDLE_INVALID


def test_copy_object_makes_a_session_copy_that_signs(raw, s, keys):
    """NSS's RSA server copies the key with an empty template; pkcs11-provider copies keys into
    session objects (CKA_COPYABLE true)."""
    ffi, lib = raw
    k = key(raw, s, "rsa")
    copy = ffi.new("CK_OBJECT_HANDLE *")
    assert lib.C_CopyObject(s, k, ffi.NULL, 0, copy) == CKR.OK
    assert copy[0] not in (0, k)
    t = ffi.new("CK_ATTRIBUTE *")
    token_flag = ffi.new("CK_BBOOL *")
    t.type, t.pValue, t.ulValueLen = CKA.TOKEN, token_flag, 1
    assert lib.C_GetAttributeValue(s, copy[0], t, 1) == CKR.OK and token_flag[0] == 0
    assert lib.C_SignInit(s, mech(raw, CKM.SHA256_RSA_PKCS), copy[0]) == CKR.OK
    buf, n = ffi.new("unsigned char[256]"), ffi.new("CK_ULONG *", 256)
    assert lib.C_Sign(s, MESSAGE, len(MESSAGE), buf, n) == CKR.OK
    serialization.load_der_public_key(keys["rsa"].public_der).verify(
        bytes(ffi.buffer(buf, 256)), MESSAGE, padding.PKCS1v15(), hashes.SHA256())
    # A template may keep the copy a session object, nothing more.
    tmpl = ffi.new("CK_ATTRIBUTE *")
    true = ffi.new("CK_BBOOL *", 1)
    tmpl.type, tmpl.pValue, tmpl.ulValueLen = CKA.TOKEN, true, 1
    assert lib.C_CopyObject(s, k, tmpl, 1, ffi.new("CK_OBJECT_HANDLE *")) == CKR.TEMPLATE_INCONSISTENT
    tmpl.type = CKA.SIGN
    assert lib.C_CopyObject(s, k, tmpl, 1, ffi.new("CK_OBJECT_HANDLE *")) == CKR.ATTRIBUTE_READ_ONLY
    assert lib.C_DestroyObject(s, k) == CKR.ACTION_PROHIBITED  # the KMS key stays
    assert lib.C_DestroyObject(s, copy[0]) == CKR.OK
    assert lib.C_DestroyObject(s, copy[0]) == CKR.OBJECT_HANDLE_INVALID


@pytest.mark.parametrize("name, mechanism, limit", [
    ("ec", CKM.ECDSA, 96),  # P-384: r || s
    ("rsa", CKM.RSA_PKCS, 256),  # RSA-2048
])
def test_single_part_input_is_capped(raw, s, name, mechanism, limit):
    """Mechanisms that collect the caller's digest take no more than any valid input: *Update
    beyond that fails and ends the operation, instead of buffering without bound."""
    ffi, lib = raw
    k = key(raw, s, name)
    assert lib.C_SignInit(s, mech(raw, mechanism), k) == CKR.OK
    assert lib.C_SignUpdate(s, b"\x01" * limit, limit) == CKR.OK
    assert lib.C_SignUpdate(s, b"\x01", 1) == CKR.DATA_LEN_RANGE
    assert lib.C_SignUpdate(s, b"\x01", 1) == CKR.OPERATION_NOT_INITIALIZED


def test_update_argument_errors_end_the_operation(raw, s):
    """§5.2: every error but CKR_BUFFER_TOO_SMALL ends the operation, in *Update too."""
    ffi, lib = raw
    k = key(raw, s, "rsa")
    assert lib.C_SignInit(s, mech(raw, CKM.SHA256_RSA_PKCS), k) == CKR.OK
    assert lib.C_SignUpdate(s, ffi.NULL, 5) == CKR.ARGUMENTS_BAD
    assert lib.C_SignUpdate(s, b"x", 1) == CKR.OPERATION_NOT_INITIALIZED
    assert lib.C_DigestInit(s, mech(raw, CKM.SHA256)) == CKR.OK
    assert lib.C_DigestUpdate(s, ffi.NULL, 5) == CKR.ARGUMENTS_BAD
    assert lib.C_DigestUpdate(s, b"x", 1) == CKR.OPERATION_NOT_INITIALIZED


def test_oaep_input_is_capped(raw, s):
    ffi, lib = raw
    k = key(raw, s, "oaep")
    params = ffi.new("CK_RSA_PKCS_OAEP_PARAMS *", [CKM.SHA256, CKG.MGF1_SHA256, 0, ffi.NULL, 0])
    assert lib.C_DecryptInit(s, mech(raw, CKM.RSA_PKCS_OAEP, params), k) == CKR.OK
    size = 256  # RSA-2048: a ciphertext is 256 bytes
    out, n = ffi.new("unsigned char[512]"), ffi.new("CK_ULONG *", 512)
    assert lib.C_DecryptUpdate(s, b"\x01" * size, size, out, n) == CKR.OK and n[0] == 0
    n[0] = 512
    assert lib.C_DecryptUpdate(s, b"\x01", 1, out, n) == CKR.ENCRYPTED_DATA_LEN_RANGE
    n[0] = 512
    assert lib.C_DecryptUpdate(s, b"\x01", 1, out, n) == CKR.OPERATION_NOT_INITIALIZED


def test_copies_made_on_every_use_leave_nothing_behind(raw, s):
    """NSS and pkcs11-provider copy a key for each use: 1,000 copies, each destroyed, grow no
    table of the module (it runs in this process), and no handle comes back."""
    from pkcs11_kms.core import objects

    ffi, lib = raw
    k = key(raw, s, "ec")
    copy = ffi.new("CK_OBJECT_HANDLE *")
    assert lib.C_CopyObject(s, k, ffi.NULL, 0, copy) == CKR.OK  # warm: every table filled once
    assert lib.C_DestroyObject(s, copy[0]) == CKR.OK
    before = len(objects._handles)
    seen = set()
    for _ in range(1000):
        assert lib.C_CopyObject(s, k, ffi.NULL, 0, copy) == CKR.OK
        assert copy[0] not in seen and copy[0] != k
        seen.add(copy[0])
        assert lib.C_DestroyObject(s, copy[0]) == CKR.OK
    assert len(objects._handles) == before


def test_session_copies_end_with_their_session(raw, s):
    ffi, lib = raw
    k = key(raw, s, "ec")
    other = ffi.new("CK_SESSION_HANDLE *")
    assert lib.C_OpenSession(0, CKF.SERIAL_SESSION, ffi.NULL, ffi.NULL, other) == CKR.OK
    copy = ffi.new("CK_OBJECT_HANDLE *")
    assert lib.C_CopyObject(other[0], k, ffi.NULL, 0, copy) == CKR.OK
    assert lib.C_SignInit(s, mech(raw, CKM.ECDSA_SHA384), copy[0]) == CKR.OK  # visible to all
    assert lib.C_SignInit(s, ffi.NULL, 0) == CKR.OK
    assert lib.C_CloseSession(other[0]) == CKR.OK
    assert lib.C_SignInit(s, mech(raw, CKM.ECDSA_SHA384), copy[0]) == CKR.KEY_HANDLE_INVALID


@pytest.mark.parametrize("mechanism, name", [(CKM.SHA_1, "sha1"), (CKM.SHA224, "sha224"),
                                             (CKM.SHA256, "sha256"), (CKM.SHA384, "sha384"),
                                             (CKM.SHA512, "sha512")])
def test_digests(raw, s, mechanism, name):
    """Computed locally; Java's SunPKCS11 checks for them before it signs with RSASSA-PSS."""
    ffi, lib = raw
    info = ffi.new("CK_MECHANISM_INFO *")
    assert lib.C_GetMechanismInfo(0, mechanism, info) == CKR.OK
    assert info.flags & CKF.DIGEST and not info.flags & CKF.HW
    expected = hashlib.new(name, MESSAGE).digest()
    n = ffi.new("CK_ULONG *")
    assert lib.C_DigestInit(s, mech(raw, mechanism)) == CKR.OK
    assert lib.C_Digest(s, MESSAGE, len(MESSAGE), ffi.NULL, n) == CKR.OK and n[0] == len(expected)
    out = ffi.new("unsigned char[64]")
    assert lib.C_Digest(s, MESSAGE, len(MESSAGE), out, n) == CKR.OK
    assert bytes(ffi.buffer(out, n[0])) == expected
    assert lib.C_DigestInit(s, mech(raw, mechanism)) == CKR.OK
    assert lib.C_DigestUpdate(s, MESSAGE[:5], 5) == CKR.OK
    assert lib.C_DigestUpdate(s, MESSAGE[5:], len(MESSAGE) - 5) == CKR.OK
    n[0] = 64
    assert lib.C_DigestFinal(s, out, n) == CKR.OK and bytes(ffi.buffer(out, n[0])) == expected
    assert lib.C_DigestInit(s, mech(raw, mechanism)) == CKR.OK
    assert lib.C_DigestKey(s, key(raw, s, "rsa")) == CKR.KEY_INDIGESTIBLE
    assert lib.C_SignInit(s, mech(raw, mechanism), key(raw, s, "rsa")) == CKR.MECHANISM_INVALID


def test_bad_arguments_end_the_operation(raw, s):
    """§5.2: every error but CKR_BUFFER_TOO_SMALL ends the operation, argument errors included."""
    ffi, lib = raw
    k = key(raw, s, "rsa")
    assert lib.C_SignInit(s, mech(raw, CKM.SHA256_RSA_PKCS), k) == CKR.OK
    assert lib.C_Sign(s, MESSAGE, len(MESSAGE), ffi.NULL, ffi.NULL) == CKR.ARGUMENTS_BAD
    assert lib.C_SignInit(s, mech(raw, CKM.SHA256_RSA_PKCS), k) == CKR.OK  # no longer active
    assert lib.C_SignFinal(s, ffi.NULL, ffi.NULL) == CKR.ARGUMENTS_BAD
    assert lib.C_VerifyInit(s, mech(raw, CKM.SHA256_RSA_PKCS), k) == CKR.OK
    assert lib.C_Verify(s, MESSAGE, len(MESSAGE), ffi.NULL, 256) == CKR.ARGUMENTS_BAD
    assert lib.C_VerifyInit(s, mech(raw, CKM.SHA256_RSA_PKCS), k) == CKR.OK
    assert lib.C_VerifyInit(s, ffi.NULL, 0) == CKR.OK
    assert lib.C_DigestInit(s, mech(raw, CKM.SHA256)) == CKR.OK
    assert lib.C_DigestKey(s, k) == CKR.KEY_INDIGESTIBLE
    assert lib.C_DigestInit(s, mech(raw, CKM.SHA256)) == CKR.OK  # the digest ended too
    assert lib.C_DigestInit(s, ffi.NULL) == CKR.OK


def test_oaep_default_digest_still_refuses_a_label(raw, s):
    ffi, lib = raw
    label = ffi.new("char[]", b"label")
    params = ffi.new("CK_RSA_PKCS_OAEP_PARAMS *", [0, 0, 1, label, 5])
    assert lib.C_DecryptInit(s, mech(raw, CKM.RSA_PKCS_OAEP, params), key(raw, s, "oaep")) == (
        CKR.MECHANISM_PARAM_INVALID)


def test_legacy_parallel_functions(raw, s):
    _, lib = raw
    assert lib.C_GetFunctionStatus(s) == CKR.FUNCTION_NOT_PARALLEL
    assert lib.C_CancelFunction(s) == CKR.FUNCTION_NOT_PARALLEL
