"""pkcs11-provider (OpenSSL 3's PKCS#11 provider, 1.x) call patterns, replayed with raw C calls.

tests/test_openssl_provider.py drives the real pkcs11-provider (Debian 12's backport, 1.0); these
tests pin the calls it makes, and those of later versions, in its order, through the PKCS#11 3.0
function table it uses (docs/design.md, "pkcs11-provider"), so that a failure names the call:

- `C_GetInterface("PKCS 11", {3, 0})`, then every call through the returned `CK_FUNCTION_LIST_3_0`
  (never the exported symbols); `C_Initialize` with `CKF_OS_LOCKING_OK` and maybe a config string
  in `pReserved`; `CKR_CRYPTOKI_ALREADY_INITIALIZED` counts as success; after `fork()` the child
  calls `C_Finalize`, `C_Initialize` again and checks that `C_GetInfo` did not change;
- attributes fetched many at once with NULL buffers (unknown types included): every entry is
  processed, failing ones get CK_UNAVAILABLE_INFORMATION, and CKR_OK never comes with one;
- `C_GetSessionInfo().flags` compared with the flags the session was opened with;
- keys whose CKA_COPYABLE is true are copied into session objects (`CKA_TOKEN=FALSE`) in the login
  session and used from other sessions;
- `C_SignInit(session, NULL, 0)` cancels; `C_GetOperationState` may fail but must leave the
  operation usable;
- OAEP with `hashAlg=0, mgf=0`; `C_SeedRandom` (result ignored) before `C_GenerateRandom` of any
  size.

The module is shared with the python-pkcs11 tests of this process: the fixture takes it over with
C_Finalize + C_Initialize and leaves it initialized (the other modules `reinitialize()`).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import select
import signal
import time
from pathlib import Path

import cffi
import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from cryptography.x509.oid import NameOID
from keyseed import key_entries, seed_key, write_config

from pkcs11_kms.ck import CK_UNAVAILABLE_INFORMATION, CKA, CKF, CKG, CKM, CKO, CKR, CKS, CKU

CDEFS = Path(__file__).resolve().parent.parent / "cdefs"
UNAVAILABLE = CK_UNAVAILABLE_INFORMATION
MESSAGE = b"pkcs11-provider call patterns " * 5
VENDOR_ATTRIBUTE = 0x8000_1234  # CKA_VENDOR_DEFINED | 0x1234: unknown to every module
ATTRIBUTE_ERRORS = {CKR.ATTRIBUTE_SENSITIVE, CKR.ATTRIBUTE_TYPE_INVALID, CKR.BUFFER_TOO_SMALL}

# CK_FUNCTION_LIST_3_0 in the order of the OASIS PKCS#11 3.0 headers (pkcs11f.h): written out
# here, not taken from the module's cdefs, so that a table built in another order fails.
SPEC_ORDER = """
C_Initialize C_Finalize C_GetInfo C_GetFunctionList C_GetSlotList C_GetSlotInfo C_GetTokenInfo
C_GetMechanismList C_GetMechanismInfo C_InitToken C_InitPIN C_SetPIN C_OpenSession C_CloseSession
C_CloseAllSessions C_GetSessionInfo C_GetOperationState C_SetOperationState C_Login C_Logout
C_CreateObject C_CopyObject C_DestroyObject C_GetObjectSize C_GetAttributeValue
C_SetAttributeValue C_FindObjectsInit C_FindObjects C_FindObjectsFinal C_EncryptInit C_Encrypt
C_EncryptUpdate C_EncryptFinal C_DecryptInit C_Decrypt C_DecryptUpdate C_DecryptFinal C_DigestInit
C_Digest C_DigestUpdate C_DigestKey C_DigestFinal C_SignInit C_Sign C_SignUpdate C_SignFinal
C_SignRecoverInit C_SignRecover C_VerifyInit C_Verify C_VerifyUpdate C_VerifyFinal
C_VerifyRecoverInit C_VerifyRecover C_DigestEncryptUpdate C_DecryptDigestUpdate
C_SignEncryptUpdate C_DecryptVerifyUpdate C_GenerateKey C_GenerateKeyPair C_WrapKey C_UnwrapKey
C_DeriveKey C_SeedRandom C_GenerateRandom C_GetFunctionStatus C_CancelFunction C_WaitForSlotEvent
C_GetInterfaceList C_GetInterface C_LoginUser C_SessionCancel C_MessageEncryptInit
C_EncryptMessage C_EncryptMessageBegin C_EncryptMessageNext C_MessageEncryptFinal
C_MessageDecryptInit C_DecryptMessage C_DecryptMessageBegin C_DecryptMessageNext
C_MessageDecryptFinal C_MessageSignInit C_SignMessage C_SignMessageBegin C_SignMessageNext
C_MessageSignFinal C_MessageVerifyInit C_VerifyMessage C_VerifyMessageBegin C_VerifyMessageNext
C_MessageVerifyFinal
""".split()  # noqa: SIM905 (92 names read better as text)


def make_ffi() -> cffi.FFI:
    """PKCS#11 types, the exported prototypes, and CK_FUNCTION_LIST_3_0 in SPEC_ORDER."""
    ffi = cffi.FFI()
    ffi.cdef((CDEFS / "pkcs11_types.h").read_text())
    prototypes = {}
    for line in (CDEFS / "pkcs11_functions.h").read_text().splitlines():
        match = re.match(r"^CK_RV (C_\w+)\((.*)\);", line.split("/*")[0].strip())
        if match:
            prototypes[match[1]] = match[2]
    assert sorted(prototypes) == sorted(SPEC_ORDER)
    fields = "\n".join(f"    CK_RV (*{name})({prototypes[name]});" for name in SPEC_ORDER)
    ffi.cdef("typedef struct CK_FUNCTION_LIST_3_0 {\n    CK_VERSION version;\n"
             f"{fields}\n}} CK_FUNCTION_LIST_3_0;")
    ffi.cdef("\n".join(f"CK_RV {name}({args});" for name, args in prototypes.items()))
    return ffi


class Client:
    """The module as pkcs11-provider sees it: one CK_FUNCTION_LIST_3_0 from C_GetInterface."""

    def __init__(self, module_path: str) -> None:
        self.ffi = ffi = make_ffi()
        self.lib = ffi.dlopen(module_path)
        self.interface = ffi.new("CK_INTERFACE **")
        rv = self.lib.C_GetInterface(b"PKCS 11", ffi.new("CK_VERSION *", [3, 0]), self.interface, 0)
        assert rv == CKR.OK
        self.fl = ffi.cast("CK_FUNCTION_LIST_3_0 *", self.interface[0].pFunctionList)

    def initialize(self, flags=CKF.OS_LOCKING_OK, reserved: bytes | None = None) -> int:
        args = self.ffi.new("CK_C_INITIALIZE_ARGS *")
        args.flags = flags
        keep = self.ffi.new("char[]", reserved) if reserved is not None else self.ffi.NULL
        args.pReserved = keep
        return self.fl.C_Initialize(args)

    def take_over(self, **kw) -> None:
        rv = self.fl.C_Finalize(self.ffi.NULL)
        assert rv in (CKR.OK, CKR.CRYPTOKI_NOT_INITIALIZED)
        assert self.initialize(**kw) == CKR.OK

    def info(self) -> tuple:
        info = self.ffi.new("CK_INFO *")
        assert self.fl.C_GetInfo(info) == CKR.OK
        return ((info.cryptokiVersion.major, info.cryptokiVersion.minor),
                bytes(info.manufacturerID), info.flags, bytes(info.libraryDescription),
                (info.libraryVersion.major, info.libraryVersion.minor))

    def slot(self, label: str) -> int:
        ffi, fl = self.ffi, self.fl
        n = ffi.new("CK_ULONG *")
        assert fl.C_GetSlotList(0, ffi.NULL, n) == CKR.OK
        slots = ffi.new("CK_SLOT_ID[]", n[0])
        assert fl.C_GetSlotList(0, slots, n) == CKR.OK
        token = ffi.new("CK_TOKEN_INFO *")
        for slot in list(slots)[: n[0]]:
            assert fl.C_GetTokenInfo(slot, token) == CKR.OK
            if bytes(token.label).decode().rstrip(" ") == label:
                return slot
        raise AssertionError(f"no token {label!r}")

    def open(self, slot: int, flags=CKF.SERIAL_SESSION) -> int:
        h = self.ffi.new("CK_SESSION_HANDLE *")
        assert self.fl.C_OpenSession(slot, flags, self.ffi.NULL, self.ffi.NULL, h) == CKR.OK
        return h[0]

    def template(self, *pairs):
        """CK_ATTRIBUTE[] from (type, value) pairs: int -> CK_ULONG, bool -> CK_BBOOL, bytes,
        or None for a NULL buffer (a length query). Returns (array, keep-alive list)."""
        ffi = self.ffi
        t = ffi.new("CK_ATTRIBUTE[]", len(pairs))
        keep = []
        for i, (kind, value) in enumerate(pairs):
            t[i].type = kind
            if value is None:
                t[i].pValue, t[i].ulValueLen = ffi.NULL, 0
                continue
            if isinstance(value, bool):
                buf, size = ffi.new("CK_BBOOL *", value), ffi.sizeof("CK_BBOOL")
            elif isinstance(value, int):
                buf, size = ffi.new("CK_ULONG *", value), ffi.sizeof("CK_ULONG")
            else:  # not ffi.new("unsigned char[]", bytes): that adds a NUL
                buf, size = ffi.new("unsigned char[]", max(len(value), 1)), len(value)
                ffi.memmove(buf, value, len(value))
            keep.append(buf)
            t[i].pValue, t[i].ulValueLen = buf, size
        return t, keep

    def find(self, session: int, *pairs) -> list[int]:
        ffi, fl = self.ffi, self.fl
        t, _keep = self.template(*pairs)
        assert fl.C_FindObjectsInit(session, t, len(pairs)) == CKR.OK
        out, n = ffi.new("CK_OBJECT_HANDLE[64]"), ffi.new("CK_ULONG *")
        found: list[int] = []
        while True:
            assert fl.C_FindObjects(session, out, 64, n) == CKR.OK
            if n[0] == 0:
                break
            found += list(out)[: n[0]]
        assert fl.C_FindObjectsFinal(session) == CKR.OK
        return found

    def key(self, session: int, label: str, cls=CKO.PRIVATE_KEY) -> int:
        found = self.find(session, (CKA.CLASS, cls), (CKA.LABEL, label.encode()))
        assert len(found) == 1, (label, found)
        return found[0]

    def attribute(self, session: int, obj: int, kind: int) -> tuple[int, bytes | None]:
        """(rv, value) of one attribute, by the two-call convention."""
        ffi, fl = self.ffi, self.fl
        t = ffi.new("CK_ATTRIBUTE *", [kind, ffi.NULL, 0])
        rv = fl.C_GetAttributeValue(session, obj, t, 1)
        if rv != CKR.OK:
            return rv, None
        buf = ffi.new("unsigned char[]", max(t.ulValueLen, 1))
        t.pValue = buf
        rv = fl.C_GetAttributeValue(session, obj, t, 1)
        return rv, bytes(ffi.buffer(buf, t.ulValueLen))

    def mechanism(self, mechanism: int, params=None):
        m = self.ffi.new("CK_MECHANISM *")
        m.mechanism = mechanism
        if params is not None:
            m.pParameter, m.ulParameterLen = params, self.ffi.sizeof(params[0])
        return m, params

    def sign(self, session: int, key: int, mechanism: int, data: bytes, params=None) -> bytes:
        ffi, fl = self.ffi, self.fl
        m, _keep = self.mechanism(mechanism, params)
        assert fl.C_SignInit(session, m, key) == CKR.OK
        n = ffi.new("CK_ULONG *")
        assert fl.C_Sign(session, data, len(data), ffi.NULL, n) == CKR.OK
        out = ffi.new("unsigned char[]", n[0])
        rv = fl.C_Sign(session, data, len(data), out, n)
        assert rv == CKR.OK, hex(rv)
        return bytes(ffi.buffer(out, n[0]))


def ulong(value: bytes) -> int:
    return int.from_bytes(value, "little")


def ecdsa_der(raw: bytes) -> bytes:
    half = len(raw) // 2
    return utils.encode_dss_signature(int.from_bytes(raw[:half], "big"),
                                      int.from_bytes(raw[half:], "big"))


def key_id_bytes(key) -> bytes:
    return bytes.fromhex(key.key_id.replace("-", ""))


def ca_issued_certificate(public_der: bytes, common_name: str) -> bytes:
    """A certificate for a KMS public key, issued by a throwaway software CA (the module pairs
    certificates with keys by public key, whoever signed them)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "provider test CA")]))
        .public_key(serialization.load_der_public_key(public_der))
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(kms_server):
    client = kms_server.client()
    return {
        "rsa": seed_key(client, None, "RSA_2048", "SIGN_VERIFY"),
        "ec": seed_key(client, None, "ECC_NIST_P256", "SIGN_VERIFY"),
        "oaep": seed_key(client, None, "RSA_2048", "ENCRYPT_DECRYPT"),
    }


@pytest.fixture(scope="module")
def configs(tmp_path_factory, kms_server, keys) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("provider")
    (folder / "rsa.pem").write_bytes(ca_issued_certificate(keys["rsa"].public_der, "provider rsa"))
    entries = key_entries(keys)
    main = write_config(folder / "config.toml", kms_server,
                        f'[[token]]\nlabel = "provider"\nkeys = [{entries}]\n'
                        'certificates = ["rsa.pem"]\n')
    other = write_config(folder / "reserved.toml", kms_server,
                         f'[[token]]\nlabel = "from-reserved"\nkeys = ["{keys["ec"].arn}"]\n')
    return {"main": main, "reserved": other}


@pytest.fixture(scope="module")
def client(module_path, configs):
    os.environ["PKCS11_KMS_CONFIG"] = configs["main"]
    pkcs11.lib(module_path)  # python-pkcs11 shares the module: load it first, then take it over
    c = Client(module_path)
    c.take_over()
    yield c
    os.environ.pop("PKCS11_KMS_CONFIG", None)  # left initialized: python-pkcs11 expects that


@pytest.fixture(scope="module")
def slot(client) -> int:
    return client.slot("provider")


@pytest.fixture
def session(client, slot):
    s = client.open(slot)
    yield s
    client.fl.C_CloseSession(s)


# ---- interface and initialisation ----------------------------------------------------------------


def test_get_interface_3_0_table_is_in_spec_order(client):
    ffi, lib, fl = client.ffi, client.lib, client.fl
    assert ffi.string(client.interface[0].pInterfaceName) == b"PKCS 11"
    assert (fl.version.major, fl.version.minor) == (3, 0)
    for name in SPEC_ORDER:  # every slot of the table is the exported function of that name
        assert ffi.cast("void *", getattr(fl, name)) == ffi.cast("void *", getattr(lib, name)), name
    # pkcs11-provider retries without a version when {3, 0} fails; NULL/NULL gives the 3.0 table.
    any_interface = ffi.new("CK_INTERFACE **")
    assert lib.C_GetInterface(ffi.NULL, ffi.NULL, any_interface, 0) == CKR.OK
    assert any_interface[0].pFunctionList == client.interface[0].pFunctionList
    # C_GetInterface is in the table too (pkcs11-provider calls it from there on 3.0 modules).
    again = ffi.new("CK_INTERFACE **")
    assert fl.C_GetInterface(b"PKCS 11", ffi.new("CK_VERSION *", [3, 0]), again, 0) == CKR.OK
    assert again[0].pFunctionList == client.interface[0].pFunctionList
    n = ffi.new("CK_ULONG *")
    assert fl.C_GetInterfaceList(ffi.NULL, n) == CKR.OK and n[0] >= 1
    listed = ffi.new("CK_INTERFACE[]", n[0])
    assert fl.C_GetInterfaceList(listed, n) == CKR.OK
    assert client.interface[0].pFunctionList in [listed[i].pFunctionList for i in range(n[0])]
    legacy = ffi.new("CK_INTERFACE **")
    assert lib.C_GetInterface(b"PKCS 11", ffi.new("CK_VERSION *", [2, 40]), legacy, 0) == CKR.OK
    old = ffi.cast("CK_VERSION *", legacy[0].pFunctionList)
    assert (old.major, old.minor) == (2, 40)


def test_initialize_os_locking_ok_and_already_initialized(client, configs, slot):
    """The fixture's take_over() did C_Finalize + C_Initialize(CKF_OS_LOCKING_OK)."""
    ffi, fl = client.ffi, client.fl
    assert client.initialize() == CKR.CRYPTOKI_ALREADY_INITIALIZED  # pkcs11-provider: success
    info = client.info()
    assert info[1].rstrip(b" ") == b"pkcs11-kms"
    token = ffi.new("CK_TOKEN_INFO *")
    assert fl.C_GetTokenInfo(slot, token) == CKR.OK
    assert not token.flags & CKF.LOGIN_REQUIRED
    assert token.flags & CKF.TOKEN_INITIALIZED  # pkcs11-provider skips tokens without it
    mechanisms = ffi.new("CK_ULONG *")
    assert fl.C_GetMechanismList(slot, ffi.NULL, mechanisms) == CKR.OK and mechanisms[0] > 0
    # get_slot_profiles(): CKO_PROFILE objects are looked for on every slot; none is fine.
    s = client.open(slot)
    try:
        assert client.find(s, (CKA.TOKEN, True), (CKA.CLASS, CKO.PROFILE)) == []
    finally:
        fl.C_CloseSession(s)


def test_config_path_in_reserved(client, configs):
    """`pkcs11-module-init-args` reaches the module as pInitArgs->pReserved."""
    fl = client.fl
    try:
        assert fl.C_Finalize(client.ffi.NULL) == CKR.OK
        assert client.initialize(reserved=configs["reserved"].encode()) == CKR.OK
        client.slot("from-reserved")
        with pytest.raises(AssertionError, match="no token"):
            client.slot("provider")
    finally:
        client.take_over()
    client.slot("provider")


def test_session_info_flags_match_open_flags(client, slot):
    """session_check(): a session whose flags differ from the opening flags is closed and
    reopened every time, which also loses the session objects (key copies) it holds."""
    ffi, fl = client.ffi, client.fl
    info = ffi.new("CK_SESSION_INFO *")
    for flags, state in [(CKF.SERIAL_SESSION, CKS.RO_PUBLIC_SESSION),
                         (CKF.SERIAL_SESSION | CKF.RW_SESSION, CKS.RW_PUBLIC_SESSION)]:
        s = client.open(slot, flags)
        try:
            assert fl.C_GetSessionInfo(s, info) == CKR.OK
            assert (info.slotID, info.state, info.flags) == (slot, state, flags)
        finally:
            fl.C_CloseSession(s)


def test_login_then_login_again(client, slot):
    """token_login(): C_Login(CKU_USER) with the configured PIN; CKR_USER_ALREADY_LOGGED_IN is
    success. Login state is per token: a second session is logged in too."""
    ffi, fl = client.ffi, client.fl
    first, second = client.open(slot), client.open(slot)
    info = ffi.new("CK_SESSION_INFO *")
    try:
        assert fl.C_Login(first, CKU.USER, b"any pin", 7) == CKR.OK
        assert fl.C_Login(second, CKU.USER, b"1234", 4) in (CKR.OK, CKR.USER_ALREADY_LOGGED_IN)
        assert fl.C_GetSessionInfo(second, info) == CKR.OK
        assert info.state == CKS.RO_USER_FUNCTIONS
        assert info.flags == CKF.SERIAL_SESSION
    finally:
        fl.C_Logout(first)
        fl.C_CloseSession(first)
        fl.C_CloseSession(second)


# ---- attributes ----------------------------------------------------------------------------------


def fetch(client, session, obj, kinds: list[int], buffers: dict[int, int] | None = None):
    """One C_GetAttributeValue over `kinds`: NULL buffers, or buffers of the given sizes.
    Returns (rv, {type: ulValueLen}, {type: bytes for filled entries})."""
    ffi = client.ffi
    t = ffi.new("CK_ATTRIBUTE[]", len(kinds))
    keep = {}
    for i, kind in enumerate(kinds):
        t[i].type = kind
        size = (buffers or {}).get(kind)
        if size is None:
            t[i].pValue, t[i].ulValueLen = ffi.NULL, 0
        else:
            keep[kind] = ffi.new("unsigned char[]", max(size, 1))
            t[i].pValue, t[i].ulValueLen = keep[kind], size
    rv = client.fl.C_GetAttributeValue(session, obj, t, len(kinds))
    lengths = {t[i].type: t[i].ulValueLen for i in range(len(kinds))}
    values = {kind: bytes(ffi.buffer(buf, lengths[kind])) for kind, buf in keep.items()
              if lengths[kind] != UNAVAILABLE}
    return rv, lengths, values


RSA_PRIVATE_QUERY = [
    CKA.CLASS, CKA.KEY_TYPE, CKA.ID, CKA.LABEL, CKA.TOKEN, CKA.PRIVATE, CKA.MODULUS,
    CKA.PUBLIC_EXPONENT, CKA.PUBLIC_KEY_INFO, CKA.SIGN, CKA.DECRYPT, CKA.SENSITIVE,
    CKA.EXTRACTABLE, CKA.ALWAYS_AUTHENTICATE, CKA.COPYABLE,
    CKA.PRIVATE_EXPONENT, CKA.PRIME_1,            # sensitive
    VENDOR_ATTRIBUTE, CKA.EC_POINT, CKA.VALUE,    # invalid for this object
]
RSA_INVALID = {CKA.PRIVATE_EXPONENT, CKA.PRIME_1, VENDOR_ATTRIBUTE, CKA.EC_POINT, CKA.VALUE}


def test_many_attributes_at_once_with_null_buffers(client, session, keys):
    key = client.key(session, "rsa")
    rv, lengths, _ = fetch(client, session, key, RSA_PRIVATE_QUERY)
    assert rv in ATTRIBUTE_ERRORS - {CKR.BUFFER_TOO_SMALL}, hex(rv)
    for kind in RSA_PRIVATE_QUERY:  # every entry processed, not only those before the first error
        if kind in RSA_INVALID:
            assert lengths[kind] == UNAVAILABLE, hex(kind)
        else:
            assert 0 < lengths[kind] < 4096, (hex(kind), lengths[kind])
    # Second pass with buffers of the announced sizes: the valid entries are all filled.
    sizes = {k: n for k, n in lengths.items() if n != UNAVAILABLE}
    rv, lengths2, values = fetch(client, session, key, RSA_PRIVATE_QUERY, sizes)
    assert rv in ATTRIBUTE_ERRORS - {CKR.BUFFER_TOO_SMALL}, hex(rv)
    assert {k for k, n in lengths2.items() if n == UNAVAILABLE} == RSA_INVALID
    public = serialization.load_der_public_key(keys["rsa"].public_der).public_numbers()
    assert ulong(values[CKA.CLASS]) == CKO.PRIVATE_KEY
    assert values[CKA.ID] == key_id_bytes(keys["rsa"])
    assert values[CKA.LABEL] == b"rsa"
    assert int.from_bytes(values[CKA.MODULUS], "big") == public.n
    assert int.from_bytes(values[CKA.PUBLIC_EXPONENT], "big") == public.e
    assert values[CKA.PUBLIC_KEY_INFO] == keys["rsa"].public_der
    assert values[CKA.TOKEN] == b"\x01" and values[CKA.SIGN] == b"\x01"
    assert values[CKA.SENSITIVE] == b"\x01" and values[CKA.EXTRACTABLE] == b"\x00"
    assert values[CKA.PRIVATE] == b"\x00" and values[CKA.ALWAYS_AUTHENTICATE] == b"\x00"


def test_all_valid_attributes_give_ok_and_no_unavailable(client, session, keys):
    """p11prov_fetch_attributes(): CKR_OK with a CK_UNAVAILABLE_INFORMATION length is an error."""
    for label, kinds in [
        ("rsa", [CKA.CLASS, CKA.KEY_TYPE, CKA.ID, CKA.MODULUS, CKA.PUBLIC_EXPONENT, CKA.COPYABLE]),
        ("ec", [CKA.CLASS, CKA.KEY_TYPE, CKA.ID, CKA.EC_PARAMS, CKA.EC_POINT, CKA.PUBLIC_KEY_INFO]),
    ]:
        for cls in (CKO.PRIVATE_KEY, CKO.PUBLIC_KEY):
            key = client.key(session, label, cls)
            rv, lengths, _ = fetch(client, session, key, kinds)
            assert rv == CKR.OK, (label, cls, hex(rv))
            assert UNAVAILABLE not in lengths.values()
            rv, _, values = fetch(client, session, key, kinds, lengths)
            assert rv == CKR.OK
            if label == "ec":
                assert values[CKA.PUBLIC_KEY_INFO] == keys["ec"].public_der
                point = serialization.load_der_public_key(keys["ec"].public_der).public_bytes(
                    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
                assert values[CKA.EC_POINT] == bytes([0x04, len(point)]) + point


def test_mixed_buffers_and_too_small_buffer(client, session, keys):
    """Fixed-size buffers (CK_ULONG, CK_BBOOL) next to NULL ones, and one buffer too small:
    CKR_BUFFER_TOO_SMALL, that entry unavailable, the others done."""
    key = client.key(session, "rsa")
    kinds = [CKA.CLASS, CKA.COPYABLE, CKA.MODULUS, CKA.LABEL, CKA.ID]
    rv, lengths, values = fetch(client, session, key, kinds,
                                {CKA.CLASS: 8, CKA.COPYABLE: 1, CKA.MODULUS: 10, CKA.LABEL: 64})
    assert rv == CKR.BUFFER_TOO_SMALL, hex(rv)
    assert lengths[CKA.MODULUS] == UNAVAILABLE
    assert ulong(values[CKA.CLASS]) == CKO.PRIVATE_KEY
    assert values[CKA.LABEL] == b"rsa"
    assert lengths[CKA.ID] == 16  # NULL buffer: length reported


def test_certificate_attributes(client, session, keys):
    certs = client.find(session, (CKA.CLASS, CKO.CERTIFICATE))
    assert len(certs) == 1
    kinds = [CKA.CLASS, CKA.CERTIFICATE_TYPE, CKA.ID, CKA.LABEL, CKA.VALUE, CKA.SUBJECT,
             CKA.ISSUER, CKA.SERIAL_NUMBER, CKA.TOKEN, VENDOR_ATTRIBUTE, CKA.MODULUS]
    rv, lengths, _ = fetch(client, session, certs[0], kinds)
    assert rv == CKR.ATTRIBUTE_TYPE_INVALID, hex(rv)
    assert lengths[VENDOR_ATTRIBUTE] == lengths[CKA.MODULUS] == UNAVAILABLE
    sizes = {k: n for k, n in lengths.items() if n != UNAVAILABLE}
    assert len(sizes) == len(kinds) - 2
    _, _, values = fetch(client, session, certs[0], kinds, sizes)
    cert = x509.load_der_x509_certificate(values[CKA.VALUE])
    assert values[CKA.ID] == key_id_bytes(keys["rsa"])  # paired with the key by public key
    assert values[CKA.SUBJECT] == cert.subject.public_bytes()
    assert values[CKA.ISSUER] == cert.issuer.public_bytes()
    assert ulong(values[CKA.CERTIFICATE_TYPE]) == 0  # CKC_X_509


# ---- key copies (CKA_COPYABLE) -------------------------------------------------------------------


def verify(keys, label: str, signature: bytes) -> None:
    """`signature` is a SHA-256 signature of MESSAGE by the key (PKCS#1 v1.5 or raw ECDSA)."""
    public = serialization.load_der_public_key(keys[label].public_der)
    if label == "ec":
        public.verify(ecdsa_der(signature), MESSAGE, ec.ECDSA(hashes.SHA256()))
    else:
        public.verify(signature, MESSAGE, padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("label, mechanism", [("rsa", CKM.SHA256_RSA_PKCS), ("ec", CKM.ECDSA)])
def test_copy_in_login_session_and_sign_from_another(client, slot, keys, label, mechanism):
    """cache_key(): C_CopyObject(login session, key, {CKA_TOKEN=FALSE}) when CKA_COPYABLE is
    true; the copy is then used from the pool's other sessions, and destroyed with
    C_DestroyObject before re-caching."""
    ffi, fl = client.ffi, client.fl
    login, worker = client.open(slot), client.open(slot)
    data = MESSAGE if label == "rsa" else hashlib.sha256(MESSAGE).digest()
    try:
        assert fl.C_Login(login, CKU.USER, b"0000", 4) == CKR.OK
        key = client.key(login, label)
        assert client.attribute(login, key, CKA.COPYABLE) == (CKR.OK, b"\x01")
        t, _keep = client.template((CKA.TOKEN, False))
        copy = ffi.new("CK_OBJECT_HANDLE *")
        assert fl.C_CopyObject(login, key, t, 1, copy) == CKR.OK
        assert copy[0] not in (0, key)
        assert client.attribute(worker, copy[0], CKA.TOKEN) == (CKR.OK, b"\x00")
        for kind in (CKA.ID, CKA.LABEL, CKA.KEY_TYPE, CKA.PUBLIC_KEY_INFO, CKA.SIGN):
            assert client.attribute(worker, copy[0], kind) == client.attribute(worker, key, kind)
        verify(keys, label, client.sign(worker, copy[0], mechanism, data))
        # Re-caching: destroy the old copy, copy again.
        assert fl.C_DestroyObject(login, copy[0]) == CKR.OK
        m, _ = client.mechanism(mechanism)
        assert fl.C_SignInit(worker, m, copy[0]) == CKR.KEY_HANDLE_INVALID
        assert fl.C_CopyObject(login, key, t, 1, copy) == CKR.OK
        verify(keys, label, client.sign(worker, copy[0], mechanism, data))
        # A session object ends with the session that created it.
        fl.C_Logout(login)
        assert fl.C_CloseSession(login) == CKR.OK
        login = None
        assert fl.C_SignInit(worker, m, copy[0]) == CKR.KEY_HANDLE_INVALID
        verify(keys, label, client.sign(worker, key, mechanism, data))  # original
    finally:
        if login is not None:
            fl.C_CloseSession(login)
        fl.C_CloseSession(worker)


# ---- operations ----------------------------------------------------------------------------------


def test_sign_init_null_cancels(client, session, keys):
    ffi, fl = client.ffi, client.fl
    key = client.key(session, "rsa")
    m, _ = client.mechanism(CKM.SHA256_RSA_PKCS)
    assert fl.C_SignInit(session, m, key) == CKR.OK
    assert fl.C_SignUpdate(session, b"abandoned", 9) == CKR.OK
    assert fl.C_SignInit(session, ffi.NULL, 0) == CKR.OK  # CK_INVALID_HANDLE with it
    assert fl.C_SignUpdate(session, b"x", 1) == CKR.OPERATION_NOT_INITIALIZED
    assert fl.C_SignInit(session, ffi.NULL, 0) == CKR.OK  # nothing active: still fine
    signature = client.sign(session, key, CKM.SHA256_RSA_PKCS, MESSAGE)
    verify(keys, "rsa", signature)


def test_verify_decrypt_encrypt_init_null_cancel(client, session):
    """PKCS#11 3.0: every C_*Init with pMechanism NULL terminates the active operation."""
    ffi, fl = client.ffi, client.fl
    rsa, oaep = client.key(session, "rsa"), client.key(session, "oaep")
    oaep_public = client.key(session, "oaep", CKO.PUBLIC_KEY)
    params = ffi.new("CK_RSA_PKCS_OAEP_PARAMS *", [CKM.SHA256, CKG.MGF1_SHA256, 1, ffi.NULL, 0])
    cases = [
        (fl.C_VerifyInit, client.mechanism(CKM.SHA256_RSA_PKCS)[0], rsa,
         lambda: fl.C_VerifyUpdate(session, b"x", 1)),
        (fl.C_DecryptInit, client.mechanism(CKM.RSA_PKCS_OAEP, params)[0], oaep,
         lambda: fl.C_Decrypt(session, b"\x00" * 256, 256, ffi.NULL, ffi.new("CK_ULONG *"))),
        (fl.C_EncryptInit, client.mechanism(CKM.RSA_PKCS_OAEP, params)[0], oaep_public,
         lambda: fl.C_Encrypt(session, b"x", 1, ffi.NULL, ffi.new("CK_ULONG *"))),
    ]
    for init, mechanism, key, use in cases:
        assert init(session, mechanism, key) == CKR.OK
        assert init(session, ffi.NULL, 0) == CKR.OK, init
        assert use() == CKR.OPERATION_NOT_INITIALIZED, init
        assert init(session, mechanism, key) == CKR.OK, init
        assert init(session, ffi.NULL, 0) == CKR.OK


def test_failed_get_operation_state_leaves_operation_usable(client, session, keys):
    """p11prov_sig_dupctx(): C_GetOperationState on a signing session; on failure the context
    moves to the copy and the operation goes on."""
    ffi, fl = client.ffi, client.fl
    key = client.key(session, "rsa")
    m, _ = client.mechanism(CKM.SHA256_RSA_PKCS)
    assert fl.C_SignInit(session, m, key) == CKR.OK
    assert fl.C_SignUpdate(session, MESSAGE[:10], 10) == CKR.OK
    n = ffi.new("CK_ULONG *")
    rv = fl.C_GetOperationState(session, ffi.NULL, n)
    assert rv in (CKR.STATE_UNSAVEABLE, CKR.FUNCTION_NOT_SUPPORTED), hex(rv)
    assert fl.C_SignUpdate(session, MESSAGE[10:], len(MESSAGE) - 10) == CKR.OK
    out, n = ffi.new("unsigned char[256]"), ffi.new("CK_ULONG *", 256)
    assert fl.C_SignFinal(session, out, n) == CKR.OK
    verify(keys, "rsa", bytes(ffi.buffer(out, n[0])))


def oaep_decrypt(client, session, key, params, ciphertext: bytes):
    ffi, fl = client.ffi, client.fl
    m, _ = client.mechanism(CKM.RSA_PKCS_OAEP, params)
    rv = fl.C_DecryptInit(session, m, key)
    if rv != CKR.OK:
        return rv, None
    n = ffi.new("CK_ULONG *")
    assert fl.C_Decrypt(session, ciphertext, len(ciphertext), ffi.NULL, n) == CKR.OK
    out = ffi.new("unsigned char[]", n[0])
    rv = fl.C_Decrypt(session, ciphertext, len(ciphertext), out, n)
    return rv, bytes(ffi.buffer(out, n[0]))


def test_oaep_zero_hash_and_mgf(client, session, keys):
    """No OAEP digest named: hashAlg=0, mgf=0. SHA-1 or CKR_MECHANISM_PARAM_INVALID, never a crash
    or another hash."""
    ffi = client.ffi
    key = client.key(session, "oaep")
    public = serialization.load_der_public_key(keys["oaep"].public_der)
    secret = os.urandom(32)
    sha1 = public.encrypt(secret, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    params = ffi.new("CK_RSA_PKCS_OAEP_PARAMS *", [0, 0, 0, ffi.NULL, 0])
    rv, plain = oaep_decrypt(client, session, key, params, sha1)
    assert rv in (CKR.OK, CKR.MECHANISM_PARAM_INVALID), hex(rv)
    if rv == CKR.OK:
        assert plain == secret
    # With the digest named (what pkcs11-provider sends for -pkeyopt rsa_oaep_md:sha256).
    sha256 = public.encrypt(secret, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(),
                                                 None))
    params = ffi.new("CK_RSA_PKCS_OAEP_PARAMS *",
                     [CKM.SHA256, CKG.MGF1_SHA256, 1, ffi.NULL, 0])  # CKZ_DATA_SPECIFIED
    assert oaep_decrypt(client, session, key, params, sha256) == (CKR.OK, secret)
    # A missing or short parameter is refused cleanly.
    m = ffi.new("CK_MECHANISM *", [CKM.RSA_PKCS_OAEP, ffi.NULL, 0])
    assert client.fl.C_DecryptInit(session, m, key) == CKR.MECHANISM_PARAM_INVALID
    m = ffi.new("CK_MECHANISM *", [CKM.RSA_PKCS_OAEP, params, 8])
    assert client.fl.C_DecryptInit(session, m, key) == CKR.MECHANISM_PARAM_INVALID


def test_seed_then_generate_random(client, session):
    """p11prov_rand_generate(): C_SeedRandom with the additional input (result ignored), then
    one C_GenerateRandom of the whole request; p11prov_check_random() asks for 8 bytes."""
    ffi, fl = client.ffi, client.fl
    rv = fl.C_SeedRandom(session, b"additional input", 16)
    assert rv in (CKR.OK, CKR.RANDOM_SEED_NOT_SUPPORTED), hex(rv)
    for size in (8, 48, 5000):
        buf = ffi.new("unsigned char[]", size)
        assert fl.C_GenerateRandom(session, buf, size) == CKR.OK
        assert len(set(bytes(buf))) > min(size // 2, 200)


# ---- fork ----------------------------------------------------------------------------------------


def test_fork_child_reinitializes(client, slot, keys):
    """p11prov_module_reinit() in a forked child: C_Finalize, C_Initialize(CKF_OS_LOCKING_OK),
    C_GetInfo must match the parent's, then sign."""
    fl = client.fl
    before = client.info()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        status = b"child: unknown failure"
        try:
            os.close(read_end)
            fl.C_Finalize(client.ffi.NULL)
            rv = client.initialize()
            if rv not in (CKR.OK, CKR.CRYPTOKI_ALREADY_INITIALIZED):
                raise AssertionError(f"C_Initialize in the child: {rv:#x}")
            if client.info() != before:
                raise AssertionError("C_GetInfo changed across fork")
            s = client.open(client.slot("provider"))
            signature = client.sign(s, client.key(s, "rsa"), CKM.SHA256_RSA_PKCS, MESSAGE)
            status = b"ok " + signature.hex().encode()
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            status = f"child: {type(e).__name__}: {e}".encode()
        finally:
            os.write(write_end, status)
            os._exit(0)
    os.close(write_end)
    try:
        deadline = time.monotonic() + 60
        chunks = []
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 1)
            if ready:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        else:
            raise AssertionError("the forked child hung")
        report = b"".join(chunks).decode()
    finally:
        os.close(read_end)
        for _ in range(50):
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert report.startswith("ok "), report
    verify(keys, "rsa", bytes.fromhex(report[3:]))
    # The parent's module is untouched by the child.
    s = client.open(slot)
    try:
        verify(keys, "rsa", client.sign(s, client.key(s, "rsa"), CKM.SHA256_RSA_PKCS, MESSAGE))
    finally:
        fl.C_CloseSession(s)
