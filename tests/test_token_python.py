"""The token core through python-pkcs11 (and a raw cffi client) in this process: tokens, objects, attributes."""

from __future__ import annotations

import os
import uuid

import pkcs11
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import Attribute, KeyType, ObjectClass

import p11raw
from pkcs11_kms.ck import CKA, CKF, CKO, CKR, CKS, CKU, CK_UNAVAILABLE_INFORMATION

ALIASES = ("web-tls", "ec-sign", "decrypt")


@pytest.fixture(scope="module")
def lib(module_path, acceptance_config):
    os.environ["PKCS11_KMS_CONFIG"] = acceptance_config
    library = pkcs11.lib(module_path)
    library.reinitialize()  # another test module may have loaded it with another config
    yield library
    os.environ.pop("PKCS11_KMS_CONFIG", None)


@pytest.fixture(scope="module")
def token(lib):
    return lib.get_token(token_label="acceptance")


@pytest.fixture
def session(token):
    with token.open() as s:
        yield s


@pytest.fixture(scope="module")
def raw(lib, module_path):
    return p11raw.load(module_path)


def expected_label(key) -> str:
    return {"web-tls": "web-tls", "decrypt": "decrypt"}.get(key.alias, key.key_id)


def test_one_token_with_the_configured_label(lib):
    tokens = list(lib.get_tokens())
    assert [t.label for t in tokens] == ["acceptance"]
    t = tokens[0]
    assert t.manufacturer_id == "pkcs11-kms"
    assert t.flags & pkcs11.TokenFlag.RNG
    assert t.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED
    assert not t.flags & pkcs11.TokenFlag.LOGIN_REQUIRED


def test_exactly_six_key_objects(session, seeded):
    private = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
    public = list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY}))
    assert len(private) == 3 and len(public) == 3
    labels = {o.label for o in private}
    assert labels == {expected_label(seeded[a]) for a in ALIASES}
    assert seeded["disabled"].key_id not in {o.label for o in private + public}


@pytest.mark.parametrize("alias", ALIASES)
def test_key_pair_attributes_match_kms(session, raw, seeded, alias):
    key = seeded[alias]
    ckid = uuid.UUID(key.key_id).bytes
    kms_public = serialization.load_der_public_key(key.public_der)
    objs = list(session.get_objects({Attribute.ID: ckid}))
    classes = sorted(o[Attribute.CLASS] for o in objs)
    assert classes == [ObjectClass.PUBLIC_KEY, ObjectClass.PRIVATE_KEY]
    for o in objs:
        assert o[Attribute.LABEL] == expected_label(key)
        assert o[Attribute.TOKEN] is True and o[Attribute.PRIVATE] is False
        assert o[Attribute.MODIFIABLE] is False
        assert read_attribute(raw, o.handle, CKA.PUBLIC_KEY_INFO) == key.public_der
        if isinstance(kms_public, rsa.RSAPublicKey):
            n = kms_public.public_numbers()
            assert o[Attribute.KEY_TYPE] == KeyType.RSA
            assert int.from_bytes(o[Attribute.MODULUS], "big") == n.n
            assert int.from_bytes(o[Attribute.PUBLIC_EXPONENT], "big") == n.e
        else:
            assert isinstance(kms_public, ec.EllipticCurvePublicKey)
            assert o[Attribute.KEY_TYPE] == KeyType.EC
            assert o[Attribute.EC_PARAMS] == bytes.fromhex("06082a8648ce3d030107")  # prime256v1
            point = kms_public.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            assert o[Attribute.EC_POINT] == bytes([0x04, len(point)]) + point
    private = next(o for o in objs if o[Attribute.CLASS] == ObjectClass.PRIVATE_KEY)
    public = next(o for o in objs if o[Attribute.CLASS] == ObjectClass.PUBLIC_KEY)
    signs = key.usage == "SIGN_VERIFY"
    assert private[Attribute.SIGN] is signs and private[Attribute.DECRYPT] is not signs
    assert public[Attribute.VERIFY] is signs and public[Attribute.ENCRYPT] is not signs
    assert private[Attribute.SENSITIVE] is True
    assert private[Attribute.EXTRACTABLE] is False
    assert private[Attribute.NEVER_EXTRACTABLE] is True
    assert private[Attribute.ALWAYS_SENSITIVE] is True
    assert private[Attribute.LOCAL] is True


def test_secret_components_are_sensitive(session, seeded):
    rsa_key = session.get_key(ObjectClass.PRIVATE_KEY, label="web-tls")
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        rsa_key[Attribute.PRIVATE_EXPONENT]
    ec_key = session.get_key(ObjectClass.PRIVATE_KEY, id=uuid.UUID(seeded["ec-sign"].key_id).bytes)
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        ec_key[Attribute.VALUE]


def test_find_by_any_attribute(session):
    rsa_keys = list(session.get_objects({Attribute.KEY_TYPE: KeyType.RSA}))
    assert len(rsa_keys) == 4
    decrypting = list(session.get_objects({Attribute.DECRYPT: True}))
    assert [o.label for o in decrypting] == ["decrypt"]
    assert list(session.get_objects({Attribute.LABEL: "no such key"})) == []


def test_handles_are_stable_and_nonzero(token):
    with token.open() as s1:
        first = sorted(o.handle for o in s1.get_objects())
    with token.open() as s2:
        second = sorted(o.handle for o in s2.get_objects())
    assert first == second and 0 not in first and len(set(first)) == len(first)


def test_login_any_pin_and_states(token):
    with token.open(user_pin="any pin at all") as s:
        assert s.user_type == pkcs11.UserType.USER
    with token.open(user_pin="1234") as s:
        assert len(list(s.get_objects())) == 6


def test_read_write_sessions_are_allowed(token):
    with token.open(rw=True) as s:  # pkcs11-tool --test and Java open them
        assert len(list(s.get_objects())) == 6


# ---- The same through the raw C interface: what python-pkcs11 hides ----


def open_raw(raw):
    ffi, lib = raw
    slots = ffi.new("CK_SLOT_ID[4]")
    count = ffi.new("CK_ULONG *", 4)
    assert lib.C_GetSlotList(1, slots, count) == CKR.OK
    session = ffi.new("CK_SESSION_HANDLE *")
    assert lib.C_OpenSession(slots[0], CKF.SERIAL_SESSION, ffi.NULL, ffi.NULL, session) == CKR.OK
    return slots[0], session[0]


def find(raw, session, template: dict[int, bytes]) -> list[int]:
    ffi, lib = raw
    keep = []
    attrs = ffi.new("CK_ATTRIBUTE[]", len(template))
    for i, (t, v) in enumerate(template.items()):
        buf = ffi.new("char[]", v)
        keep.append(buf)
        attrs[i].type, attrs[i].pValue, attrs[i].ulValueLen = t, buf, len(v)
    assert lib.C_FindObjectsInit(session, attrs, len(template)) == CKR.OK
    handles = ffi.new("CK_OBJECT_HANDLE[16]")
    n = ffi.new("CK_ULONG *")
    assert lib.C_FindObjects(session, handles, 16, n) == CKR.OK
    assert lib.C_FindObjectsFinal(session) == CKR.OK
    return [handles[i] for i in range(n[0])]


def read_attribute(raw, handle: int, attribute: int) -> bytes:
    ffi, lib = raw
    _, s = open_raw(raw)
    try:
        t = ffi.new("CK_ATTRIBUTE *")
        t.type = attribute
        assert lib.C_GetAttributeValue(s, handle, t, 1) == CKR.OK
        buf = ffi.new("char[]", t.ulValueLen)
        t.pValue = buf
        assert lib.C_GetAttributeValue(s, handle, t, 1) == CKR.OK
        return ffi.buffer(buf, t.ulValueLen)[:]
    finally:
        lib.C_CloseSession(s)


def ulong(value: int) -> bytes:
    return value.to_bytes(8, "little")


def test_get_attribute_value_five_cases(raw):
    ffi, lib = raw
    _, s = open_raw(raw)
    (key,) = find(raw, s, {CKA.CLASS: ulong(CKO.PRIVATE_KEY), CKA.LABEL: b"web-tls"})
    t = ffi.new("CK_ATTRIBUTE[4]")
    t[0].type = CKA.MODULUS  # length query
    t[1].type = CKA.PRIVATE_EXPONENT  # sensitive
    t[2].type = CKA.VALUE_LEN  # not an attribute of an RSA key
    t[3].type = CKA.LABEL  # too small a buffer
    small = ffi.new("char[3]")
    t[3].pValue, t[3].ulValueLen = small, 3
    rv = lib.C_GetAttributeValue(s, key, t, 4)
    assert rv in (CKR.ATTRIBUTE_SENSITIVE, CKR.ATTRIBUTE_TYPE_INVALID, CKR.BUFFER_TOO_SMALL)
    assert t[0].ulValueLen == 256
    assert t[1].ulValueLen == CK_UNAVAILABLE_INFORMATION
    assert t[2].ulValueLen == CK_UNAVAILABLE_INFORMATION
    assert t[3].ulValueLen == CK_UNAVAILABLE_INFORMATION
    # Exactly large enough: the value is copied and the length set.
    buf = ffi.new("char[7]")
    t[0].type, t[0].pValue, t[0].ulValueLen = CKA.LABEL, buf, 7
    assert lib.C_GetAttributeValue(s, key, t, 1) == CKR.OK
    assert ffi.buffer(buf, 7)[:] == b"web-tls" and t[0].ulValueLen == 7
    assert lib.C_GetAttributeValue(s, 0, t, 1) == CKR.OBJECT_HANDLE_INVALID
    assert lib.C_CloseSession(s) == CKR.OK


def test_info_strings_are_blank_padded(raw):
    ffi, lib = raw
    slot, s = open_raw(raw)
    info = ffi.new("CK_TOKEN_INFO *")
    assert lib.C_GetTokenInfo(slot, info) == CKR.OK
    assert ffi.buffer(info.label, 32)[:] == b"acceptance".ljust(32)
    assert b"\0" not in ffi.buffer(info.manufacturerID, 32)[:]
    assert lib.C_GetTokenInfo(999, info) == CKR.SLOT_ID_INVALID
    lib.C_CloseSession(s)


def test_session_info_and_login_states(raw):
    ffi, lib = raw
    slot, s = open_raw(raw)
    si = ffi.new("CK_SESSION_INFO *")
    assert lib.C_GetSessionInfo(s, si) == CKR.OK
    assert (si.slotID, si.state, si.flags) == (slot, CKS.RO_PUBLIC_SESSION, CKF.SERIAL_SESSION)
    pin = ffi.new("char[]", b"0000")
    assert lib.C_Login(s, CKU.SO, pin, 4) == CKR.SESSION_READ_ONLY_EXISTS  # §5.6, RO session open
    assert lib.C_Login(s, 99, pin, 4) == CKR.USER_TYPE_INVALID
    assert lib.C_Logout(s) == CKR.USER_NOT_LOGGED_IN
    assert lib.C_Login(s, CKU.USER, pin, 4) == CKR.OK
    assert lib.C_GetSessionInfo(s, si) == CKR.OK and si.state == CKS.RO_USER_FUNCTIONS
    assert lib.C_Login(s, CKU.USER, pin, 4) == CKR.USER_ALREADY_LOGGED_IN
    assert lib.C_Logout(s) == CKR.OK
    assert lib.C_GetSessionInfo(s, si) == CKR.OK and si.state == CKS.RO_PUBLIC_SESSION
    assert lib.C_Login(s, CKU.USER, pin, 4) == CKR.OK
    assert lib.C_CloseSession(s) == CKR.OK
    assert lib.C_GetSessionInfo(s, si) == CKR.SESSION_HANDLE_INVALID
    assert lib.C_OpenSession(slot, 0, ffi.NULL, ffi.NULL, ffi.new("CK_SESSION_HANDLE *")) == (
        CKR.SESSION_PARALLEL_NOT_SUPPORTED
    )
    rw = ffi.new("CK_SESSION_HANDLE *")
    assert lib.C_OpenSession(slot, CKF.SERIAL_SESSION | CKF.RW_SESSION, ffi.NULL, ffi.NULL, rw) == 0
    assert lib.C_Login(rw[0], CKU.SO, pin, 4) == CKR.PIN_INCORRECT  # no security officer
    assert lib.C_GetSessionInfo(rw[0], si) == CKR.OK and si.state == CKS.RW_PUBLIC_SESSION
    assert lib.C_CloseSession(rw[0]) == CKR.OK


def test_find_state_machine(raw):
    ffi, lib = raw
    _, s = open_raw(raw)
    handles = ffi.new("CK_OBJECT_HANDLE[2]")
    n = ffi.new("CK_ULONG *")
    assert lib.C_FindObjects(s, handles, 2, n) == CKR.OPERATION_NOT_INITIALIZED
    assert lib.C_FindObjectsInit(s, ffi.NULL, 0) == CKR.OK
    assert lib.C_FindObjectsInit(s, ffi.NULL, 0) == CKR.OPERATION_ACTIVE
    seen = []
    while lib.C_FindObjects(s, handles, 2, n) == CKR.OK and n[0]:
        seen += [handles[i] for i in range(n[0])]
    assert len(seen) == 6
    assert lib.C_FindObjectsFinal(s) == CKR.OK
    assert lib.C_FindObjectsFinal(s) == CKR.OPERATION_NOT_INITIALIZED
    lib.C_CloseSession(s)


def test_unsupported_functions_say_so(raw):
    ffi, lib = raw
    _, s = open_raw(raw)
    assert lib.C_SignRecoverInit(s, ffi.NULL, 0) == CKR.FUNCTION_NOT_SUPPORTED
    assert lib.C_GenerateKeyPair(s, ffi.NULL, ffi.NULL, 0, ffi.NULL, 0, ffi.NULL, ffi.NULL) == (
        CKR.FUNCTION_NOT_SUPPORTED)
    assert lib.C_InitToken(0, ffi.NULL, 0, ffi.NULL) == CKR.FUNCTION_NOT_SUPPORTED
    assert lib.C_GetSlotList(0, ffi.NULL, ffi.NULL) == CKR.ARGUMENTS_BAD
    lib.C_CloseSession(s)


@pytest.mark.parametrize(
    "failure", [RuntimeError("boom"), SystemExit(0), KeyboardInterrupt(), "not an int"]
)
def test_a_python_failure_is_never_ckr_ok(raw, failure):
    """An exception, sys.exit() or an unconvertible result -> CKR_GENERAL_ERROR (docs/design.md,
    "Exceptions never reach C")."""
    from pkcs11_kms.abi import entry

    ffi, lib = raw

    def broken(*_args):
        if isinstance(failure, BaseException):
            raise failure
        return failure

    saved = entry.IMPLEMENTATIONS["C_GetInfo"]
    entry.IMPLEMENTATIONS["C_GetInfo"] = broken
    try:
        assert lib.C_GetInfo(ffi.new("CK_INFO *")) == CKR.GENERAL_ERROR
    finally:
        entry.IMPLEMENTATIONS["C_GetInfo"] = saved
    assert lib.C_GetInfo(ffi.new("CK_INFO *")) == CKR.OK


def test_every_function_has_a_callback():
    from pkcs11_kms.abi import entry

    assert len(entry.ATTACHED) == 89  # 92 functions less the three written in C
