"""Ed25519, ML-DSA, HMAC and key agreement keys (issue #13) through python-pkcs11 and a raw cffi
client: their objects' attributes as PKCS#11 3.0/3.2 define them, signatures checked by
cryptography, MACs by Python's hmac over the key material the emulator reveals to tests, derived
secrets by cryptography's ECDH and X9.63 KDF."""

from __future__ import annotations

import hmac
import os
from contextlib import contextmanager

import pkcs11
import pytest
from asn1crypto import core
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from keyseed import seed_key, write_config
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

import p11raw
from pkcs11_kms.ck import CKA, CKK, CKM, CKR

ML_DSA = ("ML_DSA_44", "ML_DSA_65", "ML_DSA_87")
HMAC_BITS = (224, 256, 384, 512)
ECDH_CURVES = {256: ec.SECP256R1, 384: ec.SECP384R1, 521: ec.SECP521R1}
SIZES = {"ML_DSA_44": (1, 1312, 2420), "ML_DSA_65": (2, 1952, 3309), "ML_DSA_87": (3, 2592, 4627)}


@pytest.fixture(scope="module")
def new_keys(kms_server):
    client = kms_server.client()
    specs = {"ed25519": "ECC_NIST_EDWARDS25519", **{s.lower(): s for s in ML_DSA}}
    made = {name: seed_key(client, None, spec, "SIGN_VERIFY") for name, spec in specs.items()}
    for bits in HMAC_BITS:
        made[f"hmac{bits}"] = seed_key(client, None, f"HMAC_{bits}", "GENERATE_VERIFY_MAC")
    for curve in ECDH_CURVES:
        made[f"ecdh{curve}"] = seed_key(client, None, f"ECC_NIST_P{curve}", "KEY_AGREEMENT")
    return made


@pytest.fixture(scope="module")
def lib(module_path, tmp_path_factory, kms_server, new_keys):
    entries = ", ".join(f'{{ key = "{k.arn}", label = "{n}" }}' for n, k in new_keys.items())
    config = write_config(tmp_path_factory.mktemp("types") / "config.toml", kms_server,
                          f'[[token]]\nlabel = "types"\nkeys = [{entries}]\n')
    os.environ["PKCS11_KMS_CONFIG"] = config
    library = pkcs11.lib(module_path)
    library.reinitialize()
    yield library
    os.environ.pop("PKCS11_KMS_CONFIG", None)


@pytest.fixture
def session(lib):
    # Logged in: python-pkcs11 makes derived keys CKA_PRIVATE, which only a logged-in user may.
    with lib.get_token(token_label="types").open(user_pin="any") as s:
        yield s


@pytest.fixture(scope="module")
def raw(lib, module_path):
    return p11raw.load(module_path)


def _private(session, label):
    return session.get_key(ObjectClass.PRIVATE_KEY, label=label)


@contextmanager
def _raw_session(raw):
    """A session of the raw client, closed afterwards: its handle."""
    ffi, lib = raw
    handle = ffi.new("CK_SESSION_HANDLE *")
    assert lib.C_OpenSession(0, 4, ffi.NULL, ffi.NULL, handle) == 0  # CKF_SERIAL_SESSION
    try:
        yield handle[0]
    finally:
        lib.C_CloseSession(handle[0])


def _raw_sign(raw, handle: int, mechanism: int, params, data: bytes) -> tuple[int, bytes]:
    """C_SignInit with a parameter structure (or None), then C_Sign: (CK_RV, signature)."""
    ffi, lib = raw
    with _raw_session(raw) as s:
        m = ffi.new("CK_MECHANISM *")
        m.mechanism = mechanism
        if params is not None:
            m.pParameter, m.ulParameterLen = params, ffi.sizeof(ffi.typeof(params).item)
        rv = lib.C_SignInit(s, m, handle)
        if rv:
            return rv, b""
        out = ffi.new("char[]", 8192)
        n = ffi.new("CK_ULONG *", 8192)
        rv = lib.C_Sign(s, data, len(data), out, n)
        return rv, ffi.buffer(out, n[0])[:] if rv == 0 else b""


def _allowed(raw, handle: int) -> list[int]:
    value = p11raw.read_attribute(*raw, handle, CKA.ALLOWED_MECHANISMS)
    return [int.from_bytes(value[i:i + 8], "little") for i in range(0, len(value), 8)]


def _eddsa_params(raw, prehash: bool, context: bytes = b""):
    ffi, _ = raw
    p = ffi.new("CK_EDDSA_PARAMS *")
    p.phFlag = prehash
    keep = ffi.new("char[]", context or b"\0")
    p.pContextData, p.ulContextDataLen = (keep if context else ffi.NULL), len(context)
    return p, keep


# -- Ed25519 --


def test_ed25519_objects_have_the_attributes_consumers_read(session, raw, new_keys):
    kms_key = serialization.load_der_public_key(new_keys["ed25519"].public_der)
    assert isinstance(kms_key, ed25519.Ed25519PublicKey)
    raw_public = kms_key.public_bytes_raw()
    objs = list(session.get_objects({Attribute.LABEL: "ed25519"}))
    assert sorted(o[Attribute.CLASS] for o in objs) == [ObjectClass.PUBLIC_KEY,
                                                         ObjectClass.PRIVATE_KEY]
    for o in objs:
        assert o[Attribute.KEY_TYPE] == KeyType.EC_EDWARDS
        assert core.ObjectIdentifier.load(o[Attribute.EC_PARAMS]).dotted == "1.3.101.112"
        assert core.OctetString.load(o[Attribute.EC_POINT]).native == raw_public
        assert p11raw.read_attribute(*raw, o.handle, CKA.PUBLIC_KEY_INFO) == \
            new_keys["ed25519"].public_der
        assert _allowed(raw, o.handle) == [CKM.EDDSA]
    private = _private(session, "ed25519")
    assert private[Attribute.SIGN] and not private[Attribute.DECRYPT]
    assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]


@pytest.mark.parametrize("length", [1, 100, 4096])
def test_ed25519_pure_signatures_verify_with_cryptography(session, new_keys, length):
    message = os.urandom(length)
    signature = _private(session, "ed25519").sign(message, mechanism=Mechanism.EDDSA)
    assert len(signature) == 64
    public = serialization.load_der_public_key(new_keys["ed25519"].public_der)
    public.verify(signature, message)  # raises InvalidSignature


def test_ed25519_pure_refuses_what_kms_cannot_sign(session, raw):
    key = _private(session, "ed25519")
    with pytest.raises(pkcs11.exceptions.DataLenRange):
        key.sign(b"x" * 4097, mechanism=Mechanism.EDDSA)
    with pytest.raises(pkcs11.exceptions.DataLenRange):
        key.sign(b"", mechanism=Mechanism.EDDSA)
    params, _keep = _eddsa_params(raw, prehash=False, context=b"ctx")  # Ed25519ctx
    assert _raw_sign(raw, key.handle, CKM.EDDSA, params, b"data")[0] == CKR.MECHANISM_PARAM_INVALID
    params, _keep = _eddsa_params(raw, prehash=True, context=b"ctx")
    assert _raw_sign(raw, key.handle, CKM.EDDSA, params, b"data")[0] == CKR.MECHANISM_PARAM_INVALID


def test_ed25519_params_without_prehash_ask_for_ed25519ctx(session, raw):
    """§2.3.14: a CK_EDDSA_PARAMS without phFlag selects Ed25519ctx, even with no context."""
    key = _private(session, "ed25519")
    params, _keep = _eddsa_params(raw, prehash=False)
    assert _raw_sign(raw, key.handle, CKM.EDDSA, params, b"x")[0] == CKR.MECHANISM_PARAM_INVALID


def test_ed25519ph_is_refused(session, raw):
    """KMS's ED25519_PH_SHA_512 hashes the digest it is given again: its signature would not be
    RFC 8032's Ed25519ph of the message (docs/design.md)."""
    key = _private(session, "ed25519")
    params, _keep = _eddsa_params(raw, prehash=True)
    assert _raw_sign(raw, key.handle, CKM.EDDSA, params, b"data")[0] == CKR.MECHANISM_PARAM_INVALID


def test_ed25519_verify_in_the_module(session, new_keys):
    key = _private(session, "ed25519")
    public = session.get_key(ObjectClass.PUBLIC_KEY, label="ed25519")
    signature = key.sign(b"verified", mechanism=Mechanism.EDDSA)
    assert public.verify(b"verified", signature, mechanism=Mechanism.EDDSA)
    assert not public.verify(b"verified?", signature, mechanism=Mechanism.EDDSA)


# -- ML-DSA --


@pytest.mark.parametrize("spec", ML_DSA)
def test_ml_dsa_objects_have_the_3_2_attributes(session, raw, new_keys, spec):
    name = spec.lower()
    parameter_set, public_bytes, _ = SIZES[spec]
    pk = serialization.load_der_public_key(new_keys[name].public_der).public_bytes_raw()
    assert len(pk) == public_bytes
    objs = list(session.get_objects({Attribute.LABEL: name}))
    assert len(objs) == 2
    for o in objs:
        assert o[Attribute.KEY_TYPE] == CKK.ML_DSA
        assert int.from_bytes(p11raw.read_attribute(*raw, o.handle, CKA.PARAMETER_SET),
                              "little") == parameter_set
        assert _allowed(raw, o.handle) == [CKM.ML_DSA]
    public = session.get_key(ObjectClass.PUBLIC_KEY, label=name)
    assert p11raw.read_attribute(*raw, public.handle, CKA.VALUE) == pk
    private = _private(session, name)
    ffi, lib = raw
    assert _attribute_rv(raw, private.handle, CKA.VALUE) == CKR.ATTRIBUTE_SENSITIVE


def _attribute_rv(raw, handle: int, attribute: int) -> int:
    ffi, lib = raw
    with _raw_session(raw) as s:
        t = ffi.new("CK_ATTRIBUTE *")
        t.type = attribute
        return lib.C_GetAttributeValue(s, handle, t, 1)


def _ml_dsa_public(new_keys, name):
    return serialization.load_der_public_key(new_keys[name].public_der)


@pytest.mark.parametrize("spec", ML_DSA)
@pytest.mark.parametrize("length", [0, 1, 4096, 4097, 70_000])
def test_ml_dsa_signatures_verify_with_cryptography(session, new_keys, spec, length):
    """Up to 4096 bytes KMS signs the message; beyond (and empty) the module computes mu."""
    name = spec.lower()
    message = os.urandom(length)
    signature = _private(session, name).sign(message, mechanism=Mechanism.ML_DSA)
    assert len(signature) == SIZES[spec][2]
    _ml_dsa_public(new_keys, name).verify(signature, message)  # raises InvalidSignature


def test_ml_dsa_multi_part_crosses_the_raw_limit(session, new_keys):
    parts = [os.urandom(3000), os.urandom(3000), os.urandom(10)]
    signature = _private(session, "ml_dsa_65").sign(iter(parts), mechanism=Mechanism.ML_DSA)
    _ml_dsa_public(new_keys, "ml_dsa_65").verify(signature, b"".join(parts))


def test_ml_dsa_refuses_contexts_and_deterministic_signing(session, raw):
    ffi, _ = raw
    key = _private(session, "ml_dsa_44")
    context = ffi.new("char[]", b"ctx")
    for hedge, ctx, expected in ((0, b"", CKR.OK), (1, b"", CKR.OK),
                                 (2, b"", CKR.MECHANISM_PARAM_INVALID),
                                 (0, b"ctx", CKR.MECHANISM_PARAM_INVALID)):
        p = ffi.new("CK_SIGN_ADDITIONAL_CONTEXT *")
        p.hedgeVariant = hedge
        p.pContext, p.ulContextLen = (context, 3) if ctx else (ffi.NULL, 0)
        assert _raw_sign(raw, key.handle, CKM.ML_DSA, p, b"message")[0] == expected, (hedge, ctx)


def test_ml_dsa_verification_ignores_the_hedge(session, raw):
    """3.2: "On verification the hedgeVariant parameter is ignored"."""
    ffi, lib = raw
    key = _private(session, "ml_dsa_44")
    public = session.get_key(ObjectClass.PUBLIC_KEY, label="ml_dsa_44")
    signature = key.sign(b"message", mechanism=Mechanism.ML_DSA)
    p = ffi.new("CK_SIGN_ADDITIONAL_CONTEXT *", {"hedgeVariant": 2})  # deterministic required
    m = ffi.new("CK_MECHANISM *", {"mechanism": CKM.ML_DSA, "pParameter": p,
                                   "ulParameterLen": ffi.sizeof("CK_SIGN_ADDITIONAL_CONTEXT")})
    with _raw_session(raw) as s:
        assert lib.C_VerifyInit(s, m, public.handle) == CKR.OK
        assert lib.C_Verify(s, b"message", 7, signature, len(signature)) == CKR.OK


def test_ml_dsa_private_key_value_is_not_the_public_key(session, raw, new_keys):
    pk = serialization.load_der_public_key(new_keys["ml_dsa_44"].public_der).public_bytes_raw()
    found = list(session.get_objects({Attribute.VALUE: pk}))
    assert [o[Attribute.CLASS] for o in found] == [ObjectClass.PUBLIC_KEY]


def test_ml_dsa_verify_in_the_module(session):
    key = _private(session, "ml_dsa_87")
    public = session.get_key(ObjectClass.PUBLIC_KEY, label="ml_dsa_87")
    for message in (b"short", os.urandom(5000)):
        signature = key.sign(message, mechanism=Mechanism.ML_DSA)
        assert public.verify(message, signature, mechanism=Mechanism.ML_DSA)
        assert not public.verify(message + b"!", signature, mechanism=Mechanism.ML_DSA)


def test_mechanism_info_for_the_new_types(lib):
    slot = lib.get_slots()[0]
    eddsa = slot.get_mechanism_info(Mechanism.EDDSA)
    assert (eddsa.min_key_length, eddsa.max_key_length) == (256, 256)
    ml_dsa = slot.get_mechanism_info(Mechanism.ML_DSA)
    assert (ml_dsa.min_key_length, ml_dsa.max_key_length) == (1312, 2592)  # public key bytes (3.2)
    for info in (eddsa, ml_dsa):
        assert info.flags & pkcs11.MechanismFlag.SIGN and info.flags & pkcs11.MechanismFlag.VERIFY


# -- HMAC --

HMAC_MECHANISMS = {224: (CKM.SHA224_HMAC, CKM.SHA224_HMAC_GENERAL),
                   256: (CKM.SHA256_HMAC, CKM.SHA256_HMAC_GENERAL),
                   384: (CKM.SHA384_HMAC, CKM.SHA384_HMAC_GENERAL),
                   512: (CKM.SHA512_HMAC, CKM.SHA512_HMAC_GENERAL)}


def _secret(session, label):
    return session.get_key(ObjectClass.SECRET_KEY, label=label)


@pytest.mark.parametrize("bits", HMAC_BITS)
def test_hmac_keys_are_sensitive_secret_keys(session, raw, bits):
    objs = list(session.get_objects({Attribute.LABEL: f"hmac{bits}"}))
    assert [o[Attribute.CLASS] for o in objs] == [ObjectClass.SECRET_KEY]
    key = objs[0]
    assert key[Attribute.KEY_TYPE] == KeyType.GENERIC_SECRET
    assert key[Attribute.VALUE_LEN] == bits // 8
    assert key[Attribute.SIGN] and key[Attribute.VERIFY]
    assert not key[Attribute.ENCRYPT] and not key[Attribute.DERIVE]
    assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE]
    assert _attribute_rv(raw, key.handle, CKA.VALUE) == CKR.ATTRIBUTE_SENSITIVE
    assert _allowed(raw, key.handle) == list(HMAC_MECHANISMS[bits])


@pytest.mark.parametrize("bits", HMAC_BITS)
@pytest.mark.parametrize("length", [1, 100, 4096])
def test_hmac_matches_an_independent_hmac(session, kms_server, new_keys, bits, length):
    """The MAC equals Python's hmac over the key material the emulator reveals to tests."""
    material = kms_server.key_material(new_keys[f"hmac{bits}"].key_id).material
    assert len(material) == bits // 8
    message = os.urandom(length)
    mac = _secret(session, f"hmac{bits}").sign(message,
                                               mechanism=Mechanism(HMAC_MECHANISMS[bits][0]))
    assert mac == hmac.new(material, message, f"sha{bits}").digest()


def test_hmac_multi_part_and_verify(session, kms_server, new_keys):
    key = _secret(session, "hmac256")
    parts = [b"a" * 1000, b"b" * 3000, b"c" * 96]
    mac = key.sign(iter(parts), mechanism=Mechanism.SHA256_HMAC)
    material = kms_server.key_material(new_keys["hmac256"].key_id).material
    assert mac == hmac.new(material, b"".join(parts), "sha256").digest()
    assert key.verify(b"".join(parts), mac, mechanism=Mechanism.SHA256_HMAC)
    assert not key.verify(b"".join(parts)[:-1] + b"!", mac, mechanism=Mechanism.SHA256_HMAC)


def test_hmac_general_gives_the_leading_bytes(session, raw, kms_server, new_keys):
    ffi, lib = raw
    key = _secret(session, "hmac384")
    material = kms_server.key_material(new_keys["hmac384"].key_id).material
    full = hmac.new(material, b"general", "sha384").digest()
    length = ffi.new("CK_MAC_GENERAL_PARAMS *", 20)
    rv, mac = _raw_sign(raw, key.handle, CKM.SHA384_HMAC_GENERAL, length, b"general")
    assert (rv, mac) == (CKR.OK, full[:20])
    too_long = ffi.new("CK_MAC_GENERAL_PARAMS *", 49)
    assert _raw_sign(raw, key.handle, CKM.SHA384_HMAC_GENERAL, too_long, b"x")[0] == \
        CKR.MECHANISM_PARAM_INVALID


def test_hmac_general_verifies_the_leading_bytes(session, raw):
    ffi, lib = raw
    key = _secret(session, "hmac256")
    length = ffi.new("CK_MAC_GENERAL_PARAMS *", 16)
    rv, mac = _raw_sign(raw, key.handle, CKM.SHA256_HMAC_GENERAL, length, b"general")
    assert rv == CKR.OK and len(mac) == 16
    m = ffi.new("CK_MECHANISM *", {"mechanism": CKM.SHA256_HMAC_GENERAL, "pParameter": length,
                                   "ulParameterLen": ffi.sizeof("CK_MAC_GENERAL_PARAMS")})
    with _raw_session(raw) as s:
        for candidate, expected in ((mac, CKR.OK), (mac[:-1] + bytes([mac[-1] ^ 1]),
                                                    CKR.SIGNATURE_INVALID),
                                    (mac[:15], CKR.SIGNATURE_LEN_RANGE)):
            assert lib.C_VerifyInit(s, m, key.handle) == CKR.OK
            assert lib.C_Verify(s, b"general", 7, candidate, len(candidate)) == expected


def test_hmac_refuses_what_kms_cannot_mac(session, raw):
    key = _secret(session, "hmac256")
    with pytest.raises(pkcs11.exceptions.DataLenRange):
        key.sign(b"x" * 4097, mechanism=Mechanism.SHA256_HMAC)
    with pytest.raises(pkcs11.exceptions.DataLenRange):
        key.sign(b"", mechanism=Mechanism.SHA256_HMAC)
    # An HMAC_256 key does only SHA-256 HMACs.
    assert _raw_sign(raw, key.handle, CKM.SHA384_HMAC, None, b"x")[0] == \
        CKR.KEY_FUNCTION_NOT_PERMITTED


# -- ECDH --

EXTRACTABLE = {Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True}


def _peer(curve: int):
    """A peer key pair made here, and its uncompressed point."""
    peer = ec.generate_private_key(ECDH_CURVES[curve]())
    point = peer.public_key().public_bytes(serialization.Encoding.X962,
                                           serialization.PublicFormat.UncompressedPoint)
    return peer, point


def _raw_derive(raw, base: int, point: bytes, value: list | None = None) -> int:
    """C_DeriveKey with CKD_NULL and an empty template, as libp11 derives: its CK_RV; `value`
    gets the derived key's CKA_VALUE, read in the same session."""
    ffi, lib = raw
    with _raw_session(raw) as s:
        data = ffi.new("char[]", point)
        p = ffi.new("CK_ECDH1_DERIVE_PARAMS *", {"kdf": 1, "pPublicData": data,
                                                  "ulPublicDataLen": len(point)})
        m = ffi.new("CK_MECHANISM *", {"mechanism": CKM.ECDH1_DERIVE, "pParameter": p,
                                       "ulParameterLen": ffi.sizeof("CK_ECDH1_DERIVE_PARAMS")})
        out = ffi.new("CK_OBJECT_HANDLE *")
        rv = lib.C_DeriveKey(s, m, base, ffi.NULL, 0, out)
        if rv == CKR.OK and value is not None:
            t = ffi.new("CK_ATTRIBUTE *", {"type": CKA.VALUE})
            assert lib.C_GetAttributeValue(s, out[0], t, 1) == CKR.OK
            buf = ffi.new("char[]", t.ulValueLen)
            t.pValue = buf
            assert lib.C_GetAttributeValue(s, out[0], t, 1) == CKR.OK
            value.append(ffi.buffer(buf, t.ulValueLen)[:])
        return rv


def _expected_secret(new_keys, curve: int, peer) -> bytes:
    kms_public = serialization.load_der_public_key(new_keys[f"ecdh{curve}"].public_der)
    return peer.exchange(ec.ECDH(), kms_public)


def test_key_agreement_keys_derive_and_do_nothing_else(session, raw):
    private = _private(session, "ecdh256")
    public = session.get_key(ObjectClass.PUBLIC_KEY, label="ecdh256")
    assert private[Attribute.DERIVE] and not private[Attribute.SIGN]
    assert not public[Attribute.VERIFY] and not public[Attribute.DERIVE]
    assert _allowed(raw, private.handle) == [CKM.ECDH1_DERIVE, CKM.ECDH1_COFACTOR_DERIVE]


@pytest.mark.parametrize("curve", ECDH_CURVES)
def test_ecdh_null_kdf_gives_the_shared_secret(session, new_keys, curve):
    peer, point = _peer(curve)
    field = (curve + 7) // 8
    derived = _private(session, f"ecdh{curve}").derive_key(
        KeyType.GENERIC_SECRET, field * 8, mechanism=Mechanism.ECDH1_DERIVE,
        mechanism_param=(pkcs11.KDF.NULL, None, point), template=EXTRACTABLE)
    assert derived[Attribute.VALUE] == _expected_secret(new_keys, curve, peer)
    assert derived[Attribute.VALUE_LEN] == field
    assert derived[Attribute.CLASS] == ObjectClass.SECRET_KEY


@pytest.mark.parametrize("kdf,hash_", [(pkcs11.KDF.SHA256, hashes.SHA256),
                                       (pkcs11.KDF.SHA1, hashes.SHA1),
                                       (pkcs11.KDF.SHA512, hashes.SHA512)])
def test_ecdh_x963_kdf_as_cms_asks_for_it(session, new_keys, kdf, hash_):
    peer, point = _peer(384)
    shared_info = b"ECC-CMS-SharedInfo " + os.urandom(8)
    derived = _private(session, "ecdh384").derive_key(
        KeyType.AES, 128, mechanism=Mechanism.ECDH1_DERIVE,
        mechanism_param=(kdf, shared_info, point), template=EXTRACTABLE)
    z = _expected_secret(new_keys, 384, peer)
    assert derived[Attribute.VALUE] == X963KDF(hash_(), 16, shared_info).derive(z)
    assert derived[Attribute.KEY_TYPE] == KeyType.AES


def test_an_empty_template_gives_a_readable_secret_as_libp11_expects(session, raw, new_keys):
    peer, point = _peer(521)
    value: list[bytes] = []
    assert _raw_derive(raw, _private(session, "ecdh521").handle, point, value) == CKR.OK
    assert value == [_expected_secret(new_keys, 521, peer)]


def test_ecdh_accepts_the_point_in_an_octet_string(session, new_keys):
    peer, point = _peer(256)
    derived = _private(session, "ecdh256").derive_key(
        KeyType.GENERIC_SECRET, 256, mechanism=Mechanism.ECDH1_DERIVE,
        mechanism_param=(pkcs11.KDF.NULL, None, core.OctetString(point).dump()),
        template=EXTRACTABLE)
    assert derived[Attribute.VALUE] == _expected_secret(new_keys, 256, peer)


@pytest.mark.parametrize("template", [{Attribute.SENSITIVE: True},
                                      {Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: False}])
def test_a_derived_value_stays_in_the_module_when_the_template_says(session, template):
    _, point = _peer(256)
    derived = _private(session, "ecdh256").derive_key(
        KeyType.GENERIC_SECRET, 256, mechanism=Mechanism.ECDH1_DERIVE,
        mechanism_param=(pkcs11.KDF.NULL, None, point), template=template)
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        derived[Attribute.VALUE]


def test_ecdh_refuses_bad_public_data_and_other_keys(session, raw):
    _, wrong_curve = _peer(384)
    with pytest.raises(pkcs11.exceptions.MechanismParamInvalid):
        _private(session, "ecdh256").derive_key(
            KeyType.GENERIC_SECRET, 256, mechanism=Mechanism.ECDH1_DERIVE,
            mechanism_param=(pkcs11.KDF.NULL, None, wrong_curve), template=EXTRACTABLE)
    _, point = _peer(256)
    with pytest.raises(pkcs11.exceptions.TemplateInconsistent):  # longer than the secret
        _private(session, "ecdh256").derive_key(
            KeyType.GENERIC_SECRET, 512, mechanism=Mechanism.ECDH1_DERIVE,
            mechanism_param=(pkcs11.KDF.NULL, None, point), template=EXTRACTABLE)
    assert _raw_derive(raw, _private(session, "ed25519").handle, point) == \
        CKR.KEY_TYPE_INCONSISTENT  # a signing key derives nothing


def _derive_rv(raw, base: int, point: bytes, template: dict[int, bytes], kdf: int = 1) -> int:
    ffi, lib = raw
    with _raw_session(raw) as s:
        data = ffi.new("char[]", point)
        p = ffi.new("CK_ECDH1_DERIVE_PARAMS *", {"kdf": kdf, "pPublicData": data,
                                                  "ulPublicDataLen": len(point)})
        m = ffi.new("CK_MECHANISM *", {"mechanism": CKM.ECDH1_DERIVE, "pParameter": p,
                                       "ulParameterLen": ffi.sizeof("CK_ECDH1_DERIVE_PARAMS")})
        values = [ffi.new("char[]", v) for v in template.values()]
        attrs = ffi.new("CK_ATTRIBUTE[]", [{"type": t, "pValue": v, "ulValueLen": len(raw_v)}
                                           for (t, raw_v), v in zip(template.items(), values)])
        out = ffi.new("CK_OBJECT_HANDLE *")
        return lib.C_DeriveKey(s, m, base, attrs, len(template), out)


def _ulong(value: int) -> bytes:
    return value.to_bytes(8, "little")


@pytest.mark.parametrize("template,kdf,expected", [
    ({CKA.TOKEN: b"\x01"}, 1, CKR.TEMPLATE_INCONSISTENT),
    ({CKA.CLASS: _ulong(2)}, 1, CKR.TEMPLATE_INCONSISTENT),  # CKO_PUBLIC_KEY
    ({CKA.KEY_TYPE: _ulong(0)}, 1, CKR.TEMPLATE_INCONSISTENT),  # CKK_RSA
    ({CKA.KEY_TYPE: _ulong(0x1f), CKA.VALUE_LEN: _ulong(20)}, 1, CKR.TEMPLATE_INCONSISTENT),  # AES
    ({CKA.KEY_TYPE: _ulong(0x1f)}, 1, CKR.TEMPLATE_INCOMPLETE),
    ({CKA.VALUE_LEN: _ulong(1 << 40)}, 6, CKR.TEMPLATE_INCONSISTENT),  # SHA256 KDF, huge
    ({}, 6, CKR.TEMPLATE_INCOMPLETE),  # a KDF needs CKA_VALUE_LEN
    ({CKA.MODULUS: b"\x01"}, 1, CKR.ATTRIBUTE_TYPE_INVALID),
    ({CKA.SENSITIVE: b"\x02"}, 1, CKR.ATTRIBUTE_VALUE_INVALID),
    ({CKA.TRUSTED: b"\x01"}, 1, CKR.ATTRIBUTE_READ_ONLY),
    ({CKA.VALUE_LEN: _ulong(33)}, 1, CKR.TEMPLATE_INCONSISTENT),  # P-256's secret has 32
])
def test_derive_templates_the_module_refuses(session, raw, template, kdf, expected):
    _, point = _peer(256)
    assert _derive_rv(raw, _private(session, "ecdh256").handle, point, template, kdf) == expected


def test_derived_keys_are_session_objects(lib, new_keys):
    _, point = _peer(256)
    token = lib.get_token(token_label="types")
    with token.open(user_pin="any") as first:
        derived = _private(first, "ecdh256").derive_key(
            KeyType.GENERIC_SECRET, 256, mechanism=Mechanism.ECDH1_DERIVE,
            mechanism_param=(pkcs11.KDF.NULL, None, point), template=EXTRACTABLE)
        handle = derived.handle
        assert not derived[Attribute.TOKEN]
        with token.open() as second:
            assert handle in {o.handle for o in second.get_objects({Attribute.CLASS:
                                                                    ObjectClass.SECRET_KEY})}
    with token.open(user_pin="any") as third:  # logged in: private objects would show too
        assert handle not in {o.handle for o in third.get_objects()}
        assert len(list(third.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))) > 0
