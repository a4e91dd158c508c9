"""Conformance of object management (PKCS#11 v3.0 §5.7): C_FindObjectsInit, C_FindObjects,
C_FindObjectsFinal, C_GetAttributeValue, C_SetAttributeValue, C_CopyObject, C_DestroyObject,
C_CreateObject, C_GetObjectSize. (Copies made on every use, and copy templates:
tests/test_operation_states.py.)"""

from __future__ import annotations

import pytest
from conformance import p11, session  # noqa: F401

from pkcs11_kms.ck import CK_UNAVAILABLE_INFORMATION, CKA, CKK, CKO, CKR, CKU

INVALID = CK_UNAVAILABLE_INFORMATION


def test_find_objects_state(p11, session):
    """§5.7.7-5.7.9: C_FindObjects and C_FindObjectsFinal without a search are
    CKR_OPERATION_NOT_INITIALIZED; a second C_FindObjectsInit is CKR_OPERATION_ACTIVE and leaves
    the first search running; the search ends with C_FindObjectsFinal."""
    ffi, lib = p11.ffi, p11.lib
    out, n = ffi.new("CK_OBJECT_HANDLE[8]"), ffi.new("CK_ULONG *")
    assert lib.C_FindObjects(session, out, 8, n) == CKR.OPERATION_NOT_INITIALIZED
    assert lib.C_FindObjectsFinal(session) == CKR.OPERATION_NOT_INITIALIZED
    assert lib.C_FindObjectsInit(session, ffi.NULL, 0) == CKR.OK
    assert lib.C_FindObjectsInit(session, ffi.NULL, 0) == CKR.OPERATION_ACTIVE
    assert lib.C_FindObjects(session, out, 1, n) == CKR.OK and n[0] == 1
    assert lib.C_FindObjectsFinal(session) == CKR.OK
    assert lib.C_FindObjects(session, out, 8, n) == CKR.OPERATION_NOT_INITIALIZED
    assert lib.C_FindObjectsFinal(session) == CKR.OPERATION_NOT_INITIALIZED


def test_find_objects_in_parts(p11, session):
    """§5.7.8: each call returns up to ulMaxObjectCount handles, each object once, then 0;
    an empty template matches every object (§5.7.7). The token holds a private and a public key
    object per KMS key."""
    ffi, lib = p11.ffi, p11.lib
    everything = p11.find(session)
    assert len(everything) == len(set(everything)) >= 6 and 0 not in everything
    assert lib.C_FindObjectsInit(session, ffi.NULL, 0) == CKR.OK
    out, n, seen = ffi.new("CK_OBJECT_HANDLE[2]"), ffi.new("CK_ULONG *"), []
    for _ in range(len(everything) + 1):  # bounded: a search that never ends fails
        assert lib.C_FindObjects(session, out, 2, n) == CKR.OK and n[0] <= 2
        if n[0] == 0:
            break
        seen += [out[i] for i in range(n[0])]
    else:
        pytest.fail("C_FindObjects never returned 0 handles")
    assert lib.C_FindObjects(session, out, 2, n) == CKR.OK and n[0] == 0
    assert lib.C_FindObjectsFinal(session) == CKR.OK
    assert seen == everything


def test_find_objects_templates(p11, session):
    """§5.7.7: an object matches when it has every attribute of the template with exactly that
    value; an attribute it does not have, or another value, matches nothing."""
    private = p11.find(session, (CKA.CLASS, CKO.PRIVATE_KEY))
    public = p11.find(session, (CKA.CLASS, CKO.PUBLIC_KEY))
    assert len(private) == len(public) == 3 and not set(private) & set(public)
    assert p11.find(session, (CKA.CLASS, CKO.PRIVATE_KEY), (CKA.KEY_TYPE, CKK.EC)) == [
        p11.key(session, "ec")]
    assert p11.find(session, (CKA.CLASS, CKO.SECRET_KEY)) == []
    assert p11.find(session, (CKA.VALUE_LEN, 32)) == []  # no object has the attribute
    assert p11.find(session, (CKA.LABEL, b"web-tl")) == []  # a prefix is not the value


def test_find_objects_arguments(p11, session):
    """§5.7.7, §5.7.8, §5.1.6: a template pointer NULL with a count, an attribute with a length but
    no value, or a NULL pulObjectCount, is CKR_ARGUMENTS_BAD."""
    ffi, lib = p11.ffi, p11.lib
    assert lib.C_FindObjectsInit(session, ffi.NULL, 1) == CKR.ARGUMENTS_BAD
    t = ffi.new("CK_ATTRIBUTE *")
    t.type, t.pValue, t.ulValueLen = CKA.LABEL, ffi.NULL, 4
    assert lib.C_FindObjectsInit(session, t, 1) == CKR.ARGUMENTS_BAD
    assert lib.C_FindObjectsInit(session, ffi.NULL, 0) == CKR.OK
    assert lib.C_FindObjects(session, ffi.new("CK_OBJECT_HANDLE[1]"), 1, ffi.NULL) == (
        CKR.ARGUMENTS_BAD)
    assert lib.C_FindObjects(session, ffi.NULL, 1, ffi.new("CK_ULONG *")) == CKR.ARGUMENTS_BAD
    lib.C_FindObjectsFinal(session)


def attribute_call(p11, session, handle, *requests):  # type: ignore[no-untyped-def]
    """C_GetAttributeValue with one CK_ATTRIBUTE per (type, buffer size or None for NULL pValue)."""
    ffi = p11.ffi
    t = ffi.new("CK_ATTRIBUTE[]", len(requests))
    buffers = []
    for i, (kind, size) in enumerate(requests):
        buffers.append(ffi.new("char[]", size) if size is not None else ffi.NULL)
        t[i].type, t[i].pValue, t[i].ulValueLen = kind, buffers[-1], size or 0
    rv = p11.lib.C_GetAttributeValue(session, handle, t, len(requests))
    return rv, [int(t[i].ulValueLen) for i in range(len(requests))], buffers


def test_get_attribute_value_five_cases(p11, session):
    """§5.7.5, one case a call: (1) a sensitive attribute: CK_UNAVAILABLE_INFORMATION and
    CKR_ATTRIBUTE_SENSITIVE; (2) an attribute the object lacks: CK_UNAVAILABLE_INFORMATION and
    CKR_ATTRIBUTE_TYPE_INVALID; (3) NULL pValue: the length, CKR_OK; (4) a buffer large enough:
    the value and its length; (5) too small: CK_UNAVAILABLE_INFORMATION and CKR_BUFFER_TOO_SMALL."""
    key = p11.key(session, "rsa")
    assert attribute_call(p11, session, key, (CKA.PRIVATE_EXPONENT, 512))[:2] == (
        CKR.ATTRIBUTE_SENSITIVE, [INVALID])
    assert attribute_call(p11, session, key, (CKA.VALUE_LEN, 8))[:2] == (
        CKR.ATTRIBUTE_TYPE_INVALID, [INVALID])
    assert attribute_call(p11, session, key, (CKA.MODULUS, None))[:2] == (CKR.OK, [256])
    rv, lengths, buffers = attribute_call(p11, session, key, (CKA.LABEL, 64))
    assert (rv, lengths, p11.read(buffers[0], 7)) == (CKR.OK, [7], b"web-tls")
    assert attribute_call(p11, session, key, (CKA.LABEL, 6))[:2] == (
        CKR.BUFFER_TOO_SMALL, [INVALID])


def test_get_attribute_value_processes_every_attribute(p11, session):
    """§5.7.5: every attribute of the template is processed, whatever the others' errors; with
    several errors any one of their codes may be returned."""
    key = p11.key(session, "rsa")
    rv, lengths, buffers = attribute_call(
        p11, session, key, (CKA.PRIVATE_EXPONENT, 512), (CKA.MODULUS, None), (CKA.VALUE_LEN, 8),
        (CKA.LABEL, 64), (CKA.ID, 1), (CKA.SIGN, 1))
    assert rv in (CKR.ATTRIBUTE_SENSITIVE, CKR.ATTRIBUTE_TYPE_INVALID, CKR.BUFFER_TOO_SMALL)
    assert lengths == [INVALID, 256, INVALID, 7, INVALID, 1]
    assert p11.read(buffers[3], 7) == b"web-tls" and p11.read(buffers[5], 1) == b"\x01"


def test_get_attribute_value_arguments(p11, session):
    """§5.7.5: an unknown object is CKR_OBJECT_HANDLE_INVALID; a NULL template with a count is
    CKR_ARGUMENTS_BAD (§5.1.6)."""
    ffi, lib = p11.ffi, p11.lib
    t = p11.template((CKA.CLASS, 0))
    assert lib.C_GetAttributeValue(session, 0, t, 1) == CKR.OBJECT_HANDLE_INVALID
    assert lib.C_GetAttributeValue(session, 987654321, t, 1) == CKR.OBJECT_HANDLE_INVALID
    assert lib.C_GetAttributeValue(session, p11.key(session, "rsa"), ffi.NULL, 1) == (
        CKR.ARGUMENTS_BAD)


def test_token_objects_are_read_only(p11, session):
    """Deviation ("read-only token", "public keys"): KMS keys change only through KMS, so token
    objects say CKA_MODIFIABLE and CKA_DESTROYABLE false (§4.4), and C_DestroyObject is
    CKR_ACTION_PROHIBITED (§5.7.3); CKA_PRIVATE is false, so a public session sees them."""
    for handle in p11.find(session):
        rv, lengths, buffers = attribute_call(
            p11, session, handle, (CKA.TOKEN, 1), (CKA.MODIFIABLE, 1), (CKA.DESTROYABLE, 1),
            (CKA.PRIVATE, 1), (CKA.COPYABLE, 1))
        assert rv == CKR.OK and lengths == [1] * 5
        assert [p11.read(b, 1) for b in buffers] == [b"\x01", b"\x00", b"\x00", b"\x00", b"\x01"]
        assert p11.lib.C_DestroyObject(session, handle) == CKR.ACTION_PROHIBITED


def test_object_creation_and_changes_are_not_supported(p11, session):
    """Deviation ("no creation", "read-only token"): §5.7.1 C_CreateObject and §5.7.6
    C_SetAttributeValue are §5.1.6 stubs; KMS keys are made and changed in KMS."""
    ffi, lib = p11.ffi, p11.lib
    t = p11.template((CKA.LABEL, b"new"))
    assert lib.C_CreateObject(session, t, 1, ffi.new("CK_OBJECT_HANDLE *")) == (
        CKR.FUNCTION_NOT_SUPPORTED)
    assert lib.C_SetAttributeValue(session, p11.key(session, "rsa"), t, 1) == (
        CKR.FUNCTION_NOT_SUPPORTED)


def test_copy_object(p11, session):
    """§5.7.2: a copy of an object with CKA_COPYABLE true gets a new handle and the template's
    values (here CKA_LABEL), the original unchanged; a session object may be made in a R/O
    session (§4.4) and is seen from the application's other sessions until its session closes.
    Deviation ("no creation"): the copy is always a session object."""
    ffi, lib = p11.ffi, p11.lib
    key = p11.key(session, "ec")
    new = ffi.new("CK_OBJECT_HANDLE *")
    assert lib.C_CopyObject(session, key, p11.template((CKA.LABEL, b"mine")), 1, new) == CKR.OK
    other = p11.open()
    assert p11.find(other, (CKA.LABEL, b"mine")) == [new[0]]
    rv, lengths, buffers = attribute_call(p11, other, new[0], (CKA.TOKEN, 1), (CKA.EC_POINT, 256))
    rv0, lengths0, buffers0 = attribute_call(p11, other, key, (CKA.TOKEN, 1), (CKA.EC_POINT, 256))
    assert rv == rv0 == CKR.OK and lengths == lengths0
    assert p11.read(buffers[0], 1) == b"\x00" and p11.read(buffers0[0], 1) == b"\x01"
    assert p11.read(buffers[1], lengths[1]) == p11.read(buffers0[1], lengths0[1])
    _, (length,), (label,) = attribute_call(p11, other, key, (CKA.LABEL, 64))
    assert p11.read(label, length) != b"mine"  # the original keeps its label
    assert lib.C_CloseSession(session) == CKR.OK
    assert p11.find(other, (CKA.LABEL, b"mine")) == []
    assert lib.C_CloseSession(other) == CKR.OK


def test_copy_and_destroy_arguments(p11, session):
    """§5.7.2, §5.7.3: an unknown object is CKR_OBJECT_HANDLE_INVALID, also once destroyed; a NULL
    phNewObject is CKR_ARGUMENTS_BAD."""
    ffi, lib = p11.ffi, p11.lib
    new = ffi.new("CK_OBJECT_HANDLE *")
    assert lib.C_CopyObject(session, 987654321, ffi.NULL, 0, new) == CKR.OBJECT_HANDLE_INVALID
    assert lib.C_CopyObject(session, p11.key(session, "rsa"), ffi.NULL, 0, ffi.NULL) == (
        CKR.ARGUMENTS_BAD)
    assert lib.C_DestroyObject(session, 987654321) == CKR.OBJECT_HANDLE_INVALID
    assert lib.C_CopyObject(session, p11.key(session, "rsa"), ffi.NULL, 0, new) == CKR.OK
    assert lib.C_DestroyObject(session, new[0]) == CKR.OK
    assert lib.C_GetAttributeValue(session, new[0], p11.template((CKA.CLASS, 0)), 1) == (
        CKR.OBJECT_HANDLE_INVALID)


def test_get_object_size(p11, session):
    """§5.7.4: an unknown object is CKR_OBJECT_HANDLE_INVALID, NULL pulSize CKR_ARGUMENTS_BAD.
    Deviation ("object size"): a KMS key has no size on the token, CK_UNAVAILABLE_INFORMATION."""
    ffi, lib = p11.ffi, p11.lib
    size = ffi.new("CK_ULONG *")
    assert lib.C_GetObjectSize(session, p11.key(session, "rsa"), size) == CKR.OK
    assert size[0] == CK_UNAVAILABLE_INFORMATION
    assert lib.C_GetObjectSize(session, 987654321, size) == CKR.OBJECT_HANDLE_INVALID
    assert lib.C_GetObjectSize(session, p11.key(session, "rsa"), ffi.NULL) == CKR.ARGUMENTS_BAD


def test_private_copies_need_the_user(p11, session):
    """§5.7.2: "only public objects can be created unless the normal user is logged in"
    (CKR_USER_NOT_LOGGED_IN); §5.6.10: after C_Logout the application's handles to private objects
    are invalid, and a search no longer finds them."""
    ffi, lib = p11.ffi, p11.lib
    key, new = p11.key(session, "rsa"), ffi.new("CK_OBJECT_HANDLE *")
    private = p11.template((CKA.PRIVATE, True), (CKA.LABEL, b"private copy"))
    assert lib.C_CopyObject(session, key, private, 2, new) == CKR.USER_NOT_LOGGED_IN
    assert lib.C_Login(session, CKU.USER, b"1234", 4) == CKR.OK
    try:
        assert lib.C_CopyObject(session, key, private, 2, new) == CKR.OK
        assert p11.find(session, (CKA.LABEL, b"private copy")) == [new[0]]
    finally:
        assert lib.C_Logout(session) == CKR.OK
    assert p11.find(session, (CKA.LABEL, b"private copy")) == []
    assert attribute_call(p11, session, new[0], (CKA.CLASS, 8))[0] == CKR.OBJECT_HANDLE_INVALID


def test_private_keys_are_sensitive(p11, session):
    """§4.9 (private key objects): CKA_SENSITIVE true and CKA_EXTRACTABLE false, so every secret
    component is CKR_ATTRIBUTE_SENSITIVE (§5.7.5); the public key object has no such attribute
    (CKR_ATTRIBUTE_TYPE_INVALID)."""
    for name, secret in (("rsa", CKA.PRIVATE_EXPONENT), ("ec", CKA.VALUE), ("oaep", CKA.PRIME_1)):
        key = p11.key(session, name)
        rv, lengths, buffers = attribute_call(
            p11, session, key, (CKA.SENSITIVE, 1), (CKA.EXTRACTABLE, 1),
            (CKA.ALWAYS_SENSITIVE, 1), (CKA.NEVER_EXTRACTABLE, 1))
        assert rv == CKR.OK and [p11.read(b, 1) for b in buffers] == [b"\x01", b"\x00", b"\x01",
                                                                      b"\x01"]
        assert attribute_call(p11, session, key, (secret, 1024))[:2] == (
            CKR.ATTRIBUTE_SENSITIVE, [INVALID])
        public = p11.key(session, name, CKO.PUBLIC_KEY)
        assert attribute_call(p11, session, public, (secret, 1024))[:2] == (
            CKR.ATTRIBUTE_TYPE_INVALID, [INVALID])


def test_copy_template_values(p11, session):
    """§5.7.2: a CK_BBOOL attribute of the template that is not one byte, 0 or 1, is
    CKR_ATTRIBUTE_VALUE_INVALID. §4.4 and §5.7.3: a copy made with CKA_DESTROYABLE false cannot be
    destroyed (CKR_ACTION_PROHIBITED) and still ends with its session; one made with CKA_COPYABLE
    false cannot be copied (§5.7.2, CKR_ACTION_PROHIBITED)."""
    ffi, lib = p11.ffi, p11.lib
    key = p11.key(session, "ec")
    new, again = ffi.new("CK_OBJECT_HANDLE *"), ffi.new("CK_OBJECT_HANDLE *")
    for kind in (CKA.PRIVATE, CKA.DESTROYABLE, CKA.COPYABLE, CKA.TOKEN):
        for value in (b"\x00\x00", b"\x02", b""):
            t = p11.template((kind, value))
            assert lib.C_CopyObject(session, key, t, 1, new) == CKR.ATTRIBUTE_VALUE_INVALID
    t = p11.template((CKA.DESTROYABLE, False), (CKA.COPYABLE, False), (CKA.LABEL, b"kept"))
    assert lib.C_CopyObject(session, key, t, 3, new) == CKR.OK
    assert lib.C_DestroyObject(session, new[0]) == CKR.ACTION_PROHIBITED
    assert lib.C_CopyObject(session, new[0], ffi.NULL, 0, again) == CKR.ACTION_PROHIBITED
    other = p11.open()
    assert p11.find(other, (CKA.LABEL, b"kept")) == [new[0]]
    assert lib.C_CloseSession(session) == CKR.OK
    assert p11.find(other, (CKA.LABEL, b"kept")) == []
    assert lib.C_CloseSession(other) == CKR.OK
