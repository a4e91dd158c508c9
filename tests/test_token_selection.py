"""Which keys form which tokens: alias prefix, tags, one token per key, explicit keys without any
List permission, multi-Region ids, and certificates paired with keys (or listed on their own)."""

from __future__ import annotations

import datetime
import os
import uuid

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, ObjectClass

import p11raw
from keyseed import seed_key, write_config
from pkcs11_kms.ck import CKA

TAG = [{"TagKey": "team", "TagValue": "selection"}]


@pytest.fixture(scope="module")
def keys(kms_server):
    client = kms_server.client()
    return {
        "sel-a": seed_key(client, "sel-a", "ECC_NIST_P256", "SIGN_VERIFY", TAG),
        "sel-b": seed_key(client, "sel-b", "RSA_2048", "SIGN_VERIFY", TAG),
        "sel-untagged": seed_key(client, "sel-untagged", "ECC_NIST_P384", "SIGN_VERIFY"),
        "other": seed_key(client, "other-sel", "ECC_NIST_P256", "SIGN_VERIFY", TAG),
    }


@pytest.fixture(scope="module")
def lib(module_path):
    library = pkcs11.lib(module_path)
    yield library
    os.environ.pop("PKCS11_KMS_CONFIG", None)


def load(lib, path) -> list:
    os.environ["PKCS11_KMS_CONFIG"] = str(path)
    lib.reinitialize()
    return list(lib.get_tokens())


def labels(token) -> set[str]:
    with token.open() as s:
        return {o.label for o in s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})}


def test_alias_prefix_and_tags_select_keys(lib, kms_server, keys, tmp_path):
    prefix = write_config(tmp_path / "prefix.toml", kms_server,
                          '[[token]]\nlabel = "prefix"\nalias_prefix = "alias/sel-"\n')
    assert labels(load(lib, prefix)[0]) == {"sel-a", "sel-b", "sel-untagged"}
    both = write_config(tmp_path / "both.toml", kms_server,
                        '[[token]]\nlabel = "both"\nalias_prefix = "alias/sel-"\n'
                        'tags = { team = "selection" }\n')
    assert labels(load(lib, both)[0]) == {"sel-a", "sel-b"}


def test_one_token_per_listed_key(lib, kms_server, keys, tmp_path):
    config = write_config(tmp_path / "per-key.toml", kms_server,
                          '[[token]]\nalias_prefix = "alias/sel-"\ntoken_per_key = true\n')
    tokens = load(lib, config)
    assert sorted(t.label for t in tokens) == ["sel-a", "sel-b", "sel-untagged"]
    for t in tokens:
        assert labels(t) == {t.label}


def test_named_keys_need_no_list_permission(lib, kms_server, keys, tmp_path):
    """Keys named in the config work with GetPublicKey and Sign only: every List call is denied."""
    config = write_config(tmp_path / "named.toml", kms_server,
                          f'[[token]]\nlabel = "named"\nkeys = ["alias/sel-a", "{keys["sel-b"].arn}"]\n')
    kms_server.set_faults(error_code="AccessDeniedException",
                          operations=["ListKeys", "ListAliases", "DescribeKey", "ListResourceTags"])
    try:
        (token,) = load(lib, config)
        with token.open() as s:
            key = s.get_key(ObjectClass.PRIVATE_KEY, label="sel-a")
            signature = key.sign(b"no list calls", mechanism=pkcs11.Mechanism.ECDSA_SHA256)
        public = serialization.load_der_public_key(keys["sel-a"].public_der)
        n = len(signature) // 2
        public.verify(encode_dss_signature(int.from_bytes(signature[:n], "big"),
                                           int.from_bytes(signature[n:], "big")),
                      b"no list calls", ec.ECDSA(hashes.SHA256()))
        assert labels(token) == {"sel-a", keys["sel-b"].key_id}
    finally:
        kms_server.clear_faults()


def test_multi_region_key_id(lib, kms_server, tmp_path):
    client = kms_server.client()
    meta = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY",
                             MultiRegion=True)["KeyMetadata"]
    assert meta["KeyId"].startswith("mrk-")
    config = write_config(tmp_path / "mrk.toml", kms_server,
                          f'[[token]]\nlabel = "mrk"\nkeys = ["{meta["Arn"]}"]\n')
    (token,) = load(lib, config)
    with token.open() as s:
        key = s.get_key(ObjectClass.PRIVATE_KEY)
        assert key[Attribute.ID] == bytes.fromhex(meta["KeyId"][4:].replace("-", ""))
        assert key.label == meta["KeyId"]


def self_signed(private_key, subject: str, public_key=None, ca: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(public_key or private_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(private_key, hashes.SHA256()))


def test_certificates_pair_with_keys_by_public_key(lib, module_path, kms_server, keys, tmp_path):
    """A certificate of a KMS key takes the key's CKA_ID and label; another (a CA) is listed with
    its own. The pairing is by public key only, so a CA key in a file can issue it."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = self_signed(ca_key, "Selection CA", ca=True)
    kms_public = serialization.load_der_public_key(keys["sel-a"].public_der)
    leaf = self_signed(ca_key, "sel-a leaf", public_key=kms_public)
    bundle = tmp_path / "certs.pem"
    bundle.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca)))
    config = write_config(tmp_path / "certs.toml", kms_server,
                          f'[[token]]\nlabel = "certs"\nkeys = ["alias/sel-a"]\n'
                          f'certificates = ["{bundle}"]\n')
    (token,) = load(lib, config)
    with token.open() as s:
        certs = {c[Attribute.LABEL]: c for c in s.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE})}
        assert set(certs) == {"sel-a", "Selection CA"}
        paired = certs["sel-a"]
        assert paired[Attribute.ID] == uuid.UUID(keys["sel-a"].key_id).bytes
        assert paired[Attribute.VALUE] == leaf.public_bytes(serialization.Encoding.DER)
        ffi, raw = p11raw.load(module_path)
        category = lambda c: int.from_bytes(  # noqa: E731
            p11raw.read_attribute(ffi, raw, c.handle, CKA.CERTIFICATE_CATEGORY), "little")
        assert category(paired) == 1  # token user
        assert category(certs["Selection CA"]) == 2  # authority
        assert certs["Selection CA"][Attribute.ID] != paired[Attribute.ID]
        key = s.get_key(ObjectClass.PRIVATE_KEY, label="sel-a")
        assert key[Attribute.SUBJECT] == leaf.subject.public_bytes()
