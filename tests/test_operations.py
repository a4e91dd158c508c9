"""Sign, verify, encrypt, decrypt and random through python-pkcs11, every signature checked by cryptography."""

from __future__ import annotations

import hashlib
import os

import pkcs11
import pytest
from asn1crypto import algos, core
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from pkcs11 import MGF, Mechanism, ObjectClass

from keyseed import key_entries, seed_key, write_config

SIGN_SPECS = ["RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384",
              "ECC_NIST_P521", "ECC_SECG_P256K1"]
RSA_SPECS = SIGN_SPECS[:3]
EC_SPECS = SIGN_SPECS[3:]
HASHES = {"sha256": (hashes.SHA256, Mechanism.SHA256, MGF.SHA256),
          "sha384": (hashes.SHA384, Mechanism.SHA384, MGF.SHA384),
          "sha512": (hashes.SHA512, Mechanism.SHA512, MGF.SHA512)}
MESSAGE = b"pkcs11-kms signs this " * 300  # longer than one KMS RAW message would allow


@pytest.fixture(scope="module")
def op_keys(kms_server):
    client = kms_server.client()
    keys = {f"sign-{spec}": seed_key(client, None, spec, "SIGN_VERIFY") for spec in SIGN_SPECS}
    keys.update({f"oaep-{spec}": seed_key(client, None, spec, "ENCRYPT_DECRYPT") for spec in RSA_SPECS})
    return keys


def _config(tmp_path_factory, kms_server, op_keys, extra=""):
    entries = key_entries(op_keys)
    path = tmp_path_factory.mktemp("ops") / "config.toml"
    return write_config(path, kms_server, f'{extra}[[token]]\nlabel = "ops"\nkeys = [{entries}]\n')


@pytest.fixture(scope="module")
def token(module_path, tmp_path_factory, kms_server, op_keys):
    os.environ["PKCS11_KMS_CONFIG"] = _config(tmp_path_factory, kms_server, op_keys)
    lib = pkcs11.lib(module_path)
    lib.reinitialize()
    yield lib.get_token(token_label="ops")
    os.environ.pop("PKCS11_KMS_CONFIG", None)


@pytest.fixture
def session(token):
    with token.open() as s:
        yield s


def private(session, label):
    return session.get_key(ObjectClass.PRIVATE_KEY, label=label)


def public(session, label):
    return session.get_key(ObjectClass.PUBLIC_KEY, label=label)


def kms_public(op_keys, label):
    return serialization.load_der_public_key(op_keys[label].public_der)


def chunks(data: bytes, size: int = 1000):
    return (data[i:i + size] for i in range(0, len(data), size))


def digest_info(name: str, digest: bytes) -> bytes:
    algorithm = {"algorithm": name, "parameters": core.Null()}
    return algos.DigestInfo({"digest_algorithm": algorithm, "digest": digest}).dump()


def der_ecdsa(raw: bytes) -> bytes:
    n = len(raw) // 2
    return utils.encode_dss_signature(int.from_bytes(raw[:n], "big"), int.from_bytes(raw[n:], "big"))


# ---- RSA PKCS#1 v1.5 ----


@pytest.mark.parametrize("spec", RSA_SPECS)
@pytest.mark.parametrize("hash_name", HASHES)
@pytest.mark.parametrize("multipart", [False, True], ids=["single", "multi"])
def test_sha_rsa_pkcs(session, op_keys, spec, hash_name, multipart):
    label = f"sign-{spec}"
    mech = getattr(Mechanism, f"{hash_name.upper()}_RSA_PKCS")
    sig = private(session, label).sign(chunks(MESSAGE) if multipart else MESSAGE, mechanism=mech)
    assert len(sig) == int(spec[4:]) // 8
    kms_public(op_keys, label).verify(sig, MESSAGE, padding.PKCS1v15(), HASHES[hash_name][0]())
    assert public(session, label).verify(MESSAGE, sig, mechanism=mech)
    assert not public(session, label).verify(MESSAGE + b"!", sig, mechanism=mech)


@pytest.mark.parametrize("spec", RSA_SPECS)
@pytest.mark.parametrize("hash_name", HASHES)
def test_rsa_pkcs_digest_info(session, op_keys, spec, hash_name):
    label = f"sign-{spec}"
    digest = hashlib.new(hash_name, MESSAGE).digest()
    sig = private(session, label).sign(digest_info(hash_name, digest), mechanism=Mechanism.RSA_PKCS)
    kms_public(op_keys, label).verify(sig, MESSAGE, padding.PKCS1v15(), HASHES[hash_name][0]())
    assert public(session, label).verify(digest_info(hash_name, digest), sig,
                                         mechanism=Mechanism.RSA_PKCS)


@pytest.mark.parametrize(
    "data, error",
    [
        (b"\x30" * 32, pkcs11.exceptions.DataInvalid),  # not a DigestInfo
        (digest_info("sha1", b"\x00" * 20), pkcs11.exceptions.DataInvalid),  # KMS refuses SHA-1
        (digest_info("sha256", b"\x00" * 31), pkcs11.exceptions.DataInvalid),  # wrong length
        (digest_info("sha256", b"\x00" * 32) + b"\x00", pkcs11.exceptions.DataInvalid),  # trailing
        (bytes.fromhex("302f300b06096086480165030402010420") + b"\x00" * 32,
         pkcs11.exceptions.DataInvalid),  # no NULL parameters: KMS would sign another encoding
        (b"\x00" * 250, pkcs11.exceptions.DataLenRange),  # longer than k - 11
    ],
    ids=["garbage", "sha1", "short-digest", "trailing-byte", "no-null", "too-long"],
)
def test_rsa_pkcs_refuses_what_is_not_a_digest_info(session, data, error):
    with pytest.raises(error):
        private(session, "sign-RSA_2048").sign(data, mechanism=Mechanism.RSA_PKCS)


# ---- RSA-PSS ----


@pytest.mark.parametrize("spec", RSA_SPECS)
@pytest.mark.parametrize("hash_name", HASHES)
@pytest.mark.parametrize("variant", ["prehashed", "single", "multi"])
def test_rsa_pss(session, op_keys, spec, hash_name, variant):
    label = f"sign-{spec}"
    algorithm, hash_mech, mgf = HASHES[hash_name]
    params = (hash_mech, mgf, algorithm.digest_size)
    if variant == "prehashed":
        mech, data = Mechanism.RSA_PKCS_PSS, hashlib.new(hash_name, MESSAGE).digest()
    else:
        mech = getattr(Mechanism, f"{hash_name.upper()}_RSA_PKCS_PSS")
        data = chunks(MESSAGE) if variant == "multi" else MESSAGE
    sig = private(session, label).sign(data, mechanism=mech, mechanism_param=params)
    pss = padding.PSS(padding.MGF1(algorithm()), algorithm.digest_size)  # salt = hash length
    kms_public(op_keys, label).verify(sig, MESSAGE, pss, algorithm())
    verify_data = hashlib.new(hash_name, MESSAGE).digest() if variant == "prehashed" else MESSAGE
    assert public(session, label).verify(verify_data, sig, mechanism=mech, mechanism_param=params)


@pytest.mark.parametrize(
    "params",
    [
        (Mechanism.SHA256, MGF.SHA256, 20),  # salt not the hash length
        (Mechanism.SHA256, MGF.SHA384, 32),  # MGF over another hash
        (Mechanism.SHA_1, MGF.SHA1, 20),  # KMS has no SHA-1 PSS
        (Mechanism.SHA384, MGF.SHA384, 48),  # hash differs from the mechanism's
    ],
)
def test_pss_parameters_kms_cannot_do(session, params):
    with pytest.raises(pkcs11.exceptions.MechanismParamInvalid):
        private(session, "sign-RSA_2048").sign(
            MESSAGE, mechanism=Mechanism.SHA256_RSA_PKCS_PSS, mechanism_param=params
        )


def test_pss_input_must_be_a_digest(session):
    with pytest.raises(pkcs11.exceptions.DataLenRange):
        private(session, "sign-RSA_2048").sign(
            b"\x00" * 31, mechanism=Mechanism.RSA_PKCS_PSS,
            mechanism_param=(Mechanism.SHA256, MGF.SHA256, 32),
        )


# ---- ECDSA ----


@pytest.mark.parametrize("spec", EC_SPECS)
@pytest.mark.parametrize("hash_name", HASHES)
@pytest.mark.parametrize("multipart", [False, True], ids=["single", "multi"])
def test_ecdsa_sha(session, op_keys, spec, hash_name, multipart):
    label = f"sign-{spec}"
    mech = getattr(Mechanism, f"ECDSA_{hash_name.upper()}")
    sig = private(session, label).sign(chunks(MESSAGE) if multipart else MESSAGE, mechanism=mech)
    field = {"ECC_NIST_P256": 32, "ECC_SECG_P256K1": 32, "ECC_NIST_P384": 48, "ECC_NIST_P521": 66}
    assert len(sig) == 2 * field[spec]  # r||s, each padded to the field length
    kms_public(op_keys, label).verify(der_ecdsa(sig), MESSAGE, ec.ECDSA(HASHES[hash_name][0]()))
    assert public(session, label).verify(MESSAGE, sig, mechanism=mech)
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    assert not public(session, label).verify(MESSAGE, bad, mechanism=mech)


DIGESTS = {28: hashes.SHA224, 32: hashes.SHA256, 48: hashes.SHA384, 64: hashes.SHA512}


@pytest.mark.parametrize("spec", EC_SPECS)
@pytest.mark.parametrize("length", DIGESTS)
def test_ecdsa_over_any_sha2_digest(session, op_keys, spec, length):
    """CKM_ECDSA takes the caller's digest whatever the curve (docs/design.md,
    "Digests per curve")."""
    label = f"sign-{spec}"
    algorithm = DIGESTS[length]
    digest = hashlib.new(algorithm.name, MESSAGE).digest()
    sig = private(session, label).sign(digest, mechanism=Mechanism.ECDSA)
    kms_public(op_keys, label).verify(der_ecdsa(sig), digest, ec.ECDSA(utils.Prehashed(algorithm())))
    assert public(session, label).verify(digest, sig, mechanism=Mechanism.ECDSA)


def test_ecdsa_refuses_sha1_digests(session):
    with pytest.raises(pkcs11.exceptions.DataLenRange):
        private(session, "sign-ECC_NIST_P256").sign(b"\x01" * 20, mechanism=Mechanism.ECDSA)


# ---- RSA-OAEP ----

OAEP = {"sha1": (hashes.SHA1, Mechanism.SHA_1, MGF.SHA1), "sha256": HASHES["sha256"]}


@pytest.mark.parametrize("spec", RSA_SPECS)
@pytest.mark.parametrize("hash_name", OAEP)
def test_oaep_decrypt_what_cryptography_encrypted(session, op_keys, spec, hash_name):
    label = f"oaep-{spec}"
    algorithm, hash_mech, mgf = OAEP[hash_name]
    secret = os.urandom(100)
    ciphertext = kms_public(op_keys, label).encrypt(
        secret, padding.OAEP(padding.MGF1(algorithm()), algorithm(), None))
    plain = private(session, label).decrypt(ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP,
                                            mechanism_param=(hash_mech, mgf, None))
    assert plain == secret


@pytest.mark.parametrize("hash_name", OAEP)
def test_oaep_encrypt_then_decrypt(session, hash_name):
    _, hash_mech, mgf = OAEP[hash_name]
    secret = os.urandom(64)
    params = (hash_mech, mgf, None)
    ciphertext = public(session, "oaep-RSA_3072").encrypt(
        secret, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=params)
    assert len(ciphertext) == 384
    assert private(session, "oaep-RSA_3072").decrypt(
        ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=params) == secret


def test_oaep_bad_ciphertext(session):
    params = (Mechanism.SHA256, MGF.SHA256, None)
    with pytest.raises(pkcs11.exceptions.EncryptedDataInvalid):
        private(session, "oaep-RSA_2048").decrypt(b"\x01" * 256, mechanism=Mechanism.RSA_PKCS_OAEP,
                                                  mechanism_param=params)
    with pytest.raises(pkcs11.exceptions.EncryptedDataLenRange):
        private(session, "oaep-RSA_2048").decrypt(b"\x01" * 255, mechanism=Mechanism.RSA_PKCS_OAEP,
                                                  mechanism_param=params)


def test_oaep_refuses_a_label_and_sha384(session):
    for params in [(Mechanism.SHA256, MGF.SHA256, b"label"), (Mechanism.SHA384, MGF.SHA384, None),
                   (Mechanism.SHA256, MGF.SHA1, None)]:
        with pytest.raises(pkcs11.exceptions.MechanismParamInvalid):
            private(session, "oaep-RSA_2048").decrypt(
                b"\x01" * 256, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=params)


# ---- Random ----


@pytest.mark.parametrize("length", [1, 1024, 1025, 5000, 100_000])
def test_random(session, length):
    a, b = session.generate_random(length * 8), session.generate_random(length * 8)
    assert len(a) == len(b) == length
    if length >= 16:
        assert a != b


def test_seed_random_is_refused(session):
    with pytest.raises(pkcs11.exceptions.PKCS11Error):
        session.seed_random(b"seed")
