"""DeriveSharedSecret, GenerateMac and VerifyMac against independent computations, and the
emulator's test-only key-material hook that makes those computations possible."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import urllib.error
import urllib.request
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from emulator_support import assert_refused, error_code, new_key

from pkcs11_kms.emulator import server
from pkcs11_kms.emulator.testing import key_material

CURVES = {"ECC_NIST_P256": (ec.SECP256R1, 32), "ECC_NIST_P384": (ec.SECP384R1, 48),
          "ECC_NIST_P521": (ec.SECP521R1, 66)}
HMACS = {"HMAC_224": ("HMAC_SHA_224", hashlib.sha224, 28), "HMAC_256": ("HMAC_SHA_256",
                                                                       hashlib.sha256, 32),
         "HMAC_384": ("HMAC_SHA_384", hashlib.sha384, 48), "HMAC_512": ("HMAC_SHA_512",
                                                                       hashlib.sha512, 64)}


def spki(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def peer_der(curve: type[ec.EllipticCurve]) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    peer = ec.generate_private_key(curve())
    return peer, spki(peer.public_key())


@pytest.fixture(scope="module")
def agree(kms) -> dict[str, Any]:
    return {spec: new_key(kms, spec, "KEY_AGREEMENT") for spec in CURVES}


@pytest.fixture(scope="module")
def macs(kms) -> dict[str, Any]:
    return {spec: new_key(kms, spec, "GENERATE_VERIFY_MAC") for spec in HMACS}


@pytest.fixture(scope="module")
def others(kms) -> SimpleNamespace:
    """Keys of every other usage, and one disabled and one pending-deletion key per operation."""
    k = SimpleNamespace(
        sign_p256=new_key(kms, "ECC_NIST_P256", "SIGN_VERIFY").key_id,
        symmetric=new_key(kms, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").key_id,
        rsa=new_key(kms, "RSA_2048", "ENCRYPT_DECRYPT").key_id)
    k.disabled_agree = new_key(kms, "ECC_NIST_P256", "KEY_AGREEMENT").key_id
    k.pending_agree = new_key(kms, "ECC_NIST_P256", "KEY_AGREEMENT").key_id
    k.mac_key = new_key(kms, "HMAC_256", "GENERATE_VERIFY_MAC").key_id
    k.disabled_mac = new_key(kms, "HMAC_256", "GENERATE_VERIFY_MAC").key_id
    k.pending_mac = new_key(kms, "HMAC_256", "GENERATE_VERIFY_MAC").key_id
    k.mac_tag = kms.generate_mac(KeyId=k.disabled_mac, Message=b"m",
                                 MacAlgorithm="HMAC_SHA_256")["Mac"]
    for key_id in (k.disabled_agree, k.disabled_mac):
        kms.disable_key(KeyId=key_id)
    for key_id in (k.pending_agree, k.pending_mac):
        kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    return k


# -- DeriveSharedSecret --

def test_key_agreement_keys_describe_ecdh(kms, agree):
    for spec, key in agree.items():
        meta = kms.describe_key(KeyId=key.key_id)["KeyMetadata"]
        assert (meta["KeySpec"], meta["KeyUsage"]) == (spec, "KEY_AGREEMENT")
        assert meta["KeyAgreementAlgorithms"] == ["ECDH"]
        assert not {"SigningAlgorithms", "EncryptionAlgorithms", "MacAlgorithms"} & set(meta)
        public = kms.get_public_key(KeyId=key.key_id)
        assert public["KeyAgreementAlgorithms"] == ["ECDH"]
        assert public["KeyUsage"] == "KEY_AGREEMENT"
        assert "SigningAlgorithms" not in public


@pytest.mark.parametrize("spec", sorted(CURVES))
def test_derive_shared_secret_is_ecdh(emulator, kms, agree, spec):
    curve, size = CURVES[spec]
    key = agree[spec]
    peer, der = peer_der(curve)
    result = kms.derive_shared_secret(KeyId=key.key_id, KeyAgreementAlgorithm="ECDH",
                                      PublicKey=der)
    assert result["KeyId"] == key.arn
    assert result["KeyAgreementAlgorithm"] == "ECDH"
    assert result["KeyOrigin"] == "AWS_KMS"
    assert "CiphertextForRecipient" not in result
    secret = result["SharedSecret"]
    assert len(secret) == size  # the x-coordinate, field-size bytes
    # the peer's side, from KMS's public key only ...
    assert peer.exchange(ec.ECDH(), key.public_key) == secret
    # ... and the KMS side, from the private key the emulator reveals to tests
    material = emulator.key_material(key.key_id)
    assert (material.format, material.key_spec, material.key_usage) == ("PKCS8", spec,
                                                                        "KEY_AGREEMENT")
    private = material.private_key()
    assert spki(private.public_key()) == key.public_der
    assert private.exchange(ec.ECDH(), peer.public_key()) == secret


def test_two_kms_keys_agree(kms):
    a, b = (new_key(kms, "ECC_NIST_P256", "KEY_AGREEMENT") for _ in range(2))
    ab = kms.derive_shared_secret(KeyId=a.arn, KeyAgreementAlgorithm="ECDH",
                                  PublicKey=b.public_der)["SharedSecret"]
    kms.create_alias(AliasName=f"alias/agree-{uuid.uuid4().hex[:12]}", TargetKeyId=b.key_id)
    alias = kms.list_aliases(KeyId=b.key_id)["Aliases"][0]["AliasName"]
    ba = kms.derive_shared_secret(KeyId=alias, KeyAgreementAlgorithm="ECDH",
                                  PublicKey=a.public_der)["SharedSecret"]
    assert ab == ba


def derive(c, key_id, public_key, client=None, **kw):
    return (client or c.kms).derive_shared_secret(KeyId=key_id, KeyAgreementAlgorithm="ECDH",
                                                  PublicKey=public_key, **kw)


@pytest.fixture(scope="module")
def ctx(kms, raw_kms, agree, macs, others):
    return SimpleNamespace(kms=kms, raw=raw_kms, agree=agree, macs=macs, o=others,
                           p256=agree["ECC_NIST_P256"].key_id,
                           p384_peer=peer_der(ec.SECP384R1)[1],
                           p256_peer=peer_der(ec.SECP256R1)[1])


DERIVE_ERRORS = {
    # ValidationException: the peer key on another curve, not an EC key, or not a key at all
    "p384-peer-for-p256-key": (lambda c: derive(c, c.p256, c.p384_peer), "ValidationException"),
    "p256-peer-for-p521-key": (lambda c: derive(c, c.agree["ECC_NIST_P521"].key_id, c.p256_peer),
                               "ValidationException"),
    "secp256k1-peer": (lambda c: derive(c, c.p256, peer_der(ec.SECP256K1)[1]),
                       "ValidationException"),
    "rsa-peer": (lambda c: derive(c, c.p256, spki(rsa.generate_private_key(
        public_exponent=65537, key_size=2048).public_key())), "ValidationException"),
    "ed25519-peer": (lambda c: derive(c, c.p256, spki(
        ed25519.Ed25519PrivateKey.generate().public_key())), "ValidationException"),
    "garbage-peer": (lambda c: derive(c, c.p256, b"InvalidPublicKey"), "ValidationException"),
    "truncated-peer": (lambda c: derive(c, c.p256, c.p256_peer[:-1]), "ValidationException"),
    "raw-point-not-spki": (lambda c: derive(c, c.p256, c.p256_peer[-65:]), "ValidationException"),
    "empty-peer": (lambda c: derive(c, c.p256, b"", client=c.raw), "ValidationException"),
    "peer-over-8192": (lambda c: derive(c, c.p256, os.urandom(8193), client=c.raw),
                       "ValidationException"),
    "unknown-algorithm": (lambda c: c.raw.derive_shared_secret(
        KeyId=c.p256, KeyAgreementAlgorithm="ECDH_COFACTOR", PublicKey=c.p256_peer),
        "ValidationException"),
    "missing-algorithm": (lambda c: c.raw.derive_shared_secret(
        KeyId=c.p256, PublicKey=c.p256_peer), "ValidationException"),
    "recipient": (lambda c: derive(c, c.p256, c.p256_peer, Recipient={
        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": b"not a document"}),
        "ValidationException"),
    # InvalidKeyUsageException: any key whose usage is not KEY_AGREEMENT
    "ecc-sign-key": (lambda c: derive(c, c.o.sign_p256, c.p256_peer), "InvalidKeyUsageException"),
    "symmetric-key": (lambda c: derive(c, c.o.symmetric, c.p256_peer),
                      "InvalidKeyUsageException"),
    "rsa-key": (lambda c: derive(c, c.o.rsa, c.p256_peer), "InvalidKeyUsageException"),
    "hmac-key": (lambda c: derive(c, c.macs["HMAC_256"].key_id, c.p256_peer),
                 "InvalidKeyUsageException"),
    # key states and existence
    "disabled-key": (lambda c: derive(c, c.o.disabled_agree, c.p256_peer), "DisabledException"),
    "pending-deletion": (lambda c: derive(c, c.o.pending_agree, c.p256_peer),
                         "KMSInvalidStateException"),
    "unknown-key": (lambda c: derive(c, str(uuid.uuid4()), c.p256_peer), "NotFoundException"),
    # DryRun: after every other check
    "dry-run": (lambda c: derive(c, c.p256, c.p256_peer, DryRun=True), "DryRunOperationException"),
    "dry-run-wrong-curve": (lambda c: derive(c, c.p256, c.p384_peer, DryRun=True),
                            "ValidationException"),
    "dry-run-wrong-usage": (lambda c: derive(c, c.o.sign_p256, c.p256_peer, DryRun=True),
                            "InvalidKeyUsageException"),
    "dry-run-disabled": (lambda c: derive(c, c.o.disabled_agree, c.p256_peer, DryRun=True),
                         "DisabledException"),
}


@pytest.mark.parametrize("case", sorted(DERIVE_ERRORS))
def test_derive_shared_secret_errors(ctx, case):
    call, expected = DERIVE_ERRORS[case]
    assert_refused(call, ctx, expected)


def test_derive_wrong_usage_message(ctx):
    with pytest.raises(ClientError) as exc:
        derive(ctx, ctx.o.sign_p256, ctx.p256_peer)
    assert exc.value.response["Error"]["Message"].endswith(
        "key usage is SIGN_VERIFY which is not valid for DeriveSharedSecret.")


# -- GenerateMac / VerifyMac --

@pytest.mark.parametrize("spec", sorted(HMACS))
def test_generate_mac_is_hmac(emulator, kms, macs, spec):
    algorithm, digest, key_bytes = HMACS[spec]
    key = macs[spec]
    meta = kms.describe_key(KeyId=key.key_id)["KeyMetadata"]
    assert meta["MacAlgorithms"] == [algorithm]
    material = emulator.key_material(key.arn)
    assert (material.format, material.key_spec, material.key_usage) == (
        "RAW", spec, "GENERATE_VERIFY_MAC")
    assert len(material.material) == key_bytes  # the key spec's size, as KMS generates it
    for message in (b"m", os.urandom(100), os.urandom(4096)):
        result = kms.generate_mac(KeyId=key.key_id, Message=message, MacAlgorithm=algorithm)
        assert result["Mac"] == hmac.new(material.material, message, digest).digest()
        assert (result["KeyId"], result["MacAlgorithm"]) == (key.arn, algorithm)
        verified = kms.verify_mac(KeyId=key.key_id, Message=message, MacAlgorithm=algorithm,
                                  Mac=result["Mac"])
        assert (verified["KeyId"], verified["MacValid"], verified["MacAlgorithm"]) == (
            key.arn, True, algorithm)


@pytest.mark.parametrize("spec", sorted(HMACS))
def test_mac_algorithm_must_be_the_key_specs(ctx, spec):
    own = HMACS[spec][0]
    for algorithm in (a for a, _, _ in HMACS.values() if a != own):
        with pytest.raises(ClientError) as exc:
            ctx.kms.generate_mac(KeyId=ctx.macs[spec].key_id, Message=b"m",
                                 MacAlgorithm=algorithm)
        assert error_code(exc) == "InvalidKeyUsageException"
        assert exc.value.response["Error"]["Message"] == (
            f"Algorithm {algorithm} is incompatible with key spec {spec}.")
        with pytest.raises(ClientError) as exc:
            ctx.kms.verify_mac(KeyId=ctx.macs[spec].key_id, Message=b"m",
                               MacAlgorithm=algorithm, Mac=os.urandom(32))
        assert error_code(exc) == "InvalidKeyUsageException"


def mac(c, spec="HMAC_256", message=b"m", client=None, **kw):
    return (client or c.kms).generate_mac(KeyId=c.macs[spec].key_id if spec in c.macs else spec,
                                          Message=message, MacAlgorithm="HMAC_SHA_256", **kw)


def verify(c, tag, spec="HMAC_256", message=b"m", client=None, **kw):
    return (client or c.kms).verify_mac(KeyId=c.macs[spec].key_id if spec in c.macs else spec,
                                        Message=message, MacAlgorithm="HMAC_SHA_256", Mac=tag,
                                        **kw)


def good_tag(c, message=b"m"):
    return mac(c, message=message)["Mac"]


def flipped(tag: bytes) -> bytes:
    return bytes([tag[0] ^ 1]) + tag[1:]


MAC_ERRORS = {
    # ValidationException: Message 1..4096 bytes, the algorithm enum, Mac 1..6144 bytes
    "generate-over-4096": (lambda c: mac(c, message=os.urandom(4097)), "ValidationException"),
    "generate-empty": (lambda c: mac(c, message=b"", client=c.raw), "ValidationException"),
    "verify-over-4096": (lambda c: verify(c, good_tag(c), message=os.urandom(4097)),
                         "ValidationException"),
    "verify-empty-mac": (lambda c: verify(c, b"", client=c.raw), "ValidationException"),
    "verify-mac-over-6144": (lambda c: verify(c, os.urandom(6145), client=c.raw),
                             "ValidationException"),
    "generate-unknown-algorithm": (lambda c: c.raw.generate_mac(
        KeyId=c.macs["HMAC_256"].key_id, Message=b"m", MacAlgorithm="HMAC_SHA_1"),
        "ValidationException"),
    "generate-missing-algorithm": (lambda c: c.raw.generate_mac(
        KeyId=c.macs["HMAC_256"].key_id, Message=b"m"), "ValidationException"),
    # InvalidKeyUsageException: a key whose usage is not GENERATE_VERIFY_MAC
    "generate-symmetric-key": (lambda c: mac(c, c.o.symmetric), "InvalidKeyUsageException"),
    "verify-sign-key": (lambda c: verify(c, good_tag(c), c.o.sign_p256),
                        "InvalidKeyUsageException"),
    "generate-key-agreement-key": (lambda c: mac(c, c.p256), "InvalidKeyUsageException"),
    # KMSInvalidMacException: any MAC but the right one
    "verify-flipped-bit": (lambda c: verify(c, flipped(good_tag(c))), "KMSInvalidMacException"),
    "verify-truncated": (lambda c: verify(c, good_tag(c)[:16]), "KMSInvalidMacException"),
    "verify-other-message": (lambda c: verify(c, good_tag(c), message=b"n"),
                             "KMSInvalidMacException"),
    "verify-other-key": (lambda c: verify(c, c.kms.generate_mac(
        KeyId=c.o.mac_key, Message=b"m", MacAlgorithm="HMAC_SHA_256")["Mac"]),
        "KMSInvalidMacException"),
    # key states and existence
    "generate-disabled": (lambda c: mac(c, c.o.disabled_mac), "DisabledException"),
    "verify-disabled": (lambda c: verify(c, c.o.mac_tag, c.o.disabled_mac), "DisabledException"),
    "generate-pending-deletion": (lambda c: mac(c, c.o.pending_mac), "KMSInvalidStateException"),
    "verify-pending-deletion": (lambda c: verify(c, c.o.mac_tag, c.o.pending_mac),
                                "KMSInvalidStateException"),
    "verify-unknown-key": (lambda c: verify(c, c.o.mac_tag, str(uuid.uuid4())),
                           "NotFoundException"),
    # DryRun: after every other check, before the MAC comparison
    "generate-dry-run": (lambda c: mac(c, DryRun=True), "DryRunOperationException"),
    "verify-dry-run": (lambda c: verify(c, good_tag(c), DryRun=True), "DryRunOperationException"),
    "verify-dry-run-bad-mac": (lambda c: verify(c, os.urandom(32), DryRun=True),
                               "DryRunOperationException"),
    "generate-dry-run-over-4096": (lambda c: mac(c, message=os.urandom(4097), DryRun=True),
                                   "ValidationException"),
    "generate-dry-run-disabled": (lambda c: mac(c, c.o.disabled_mac, DryRun=True),
                                  "DisabledException"),
    "generate-dry-run-wrong-algorithm": (lambda c: c.kms.generate_mac(
        KeyId=c.macs["HMAC_512"].key_id, Message=b"m", MacAlgorithm="HMAC_SHA_256",
        DryRun=True), "InvalidKeyUsageException"),
}


@pytest.mark.parametrize("case", sorted(MAC_ERRORS))
def test_mac_errors(ctx, case):
    call, expected = MAC_ERRORS[case]
    assert_refused(call, ctx, expected)


def test_mac_length_message_names_the_field(ctx):
    with pytest.raises(ClientError) as exc:
        mac(ctx, message=os.urandom(4097))
    assert exc.value.response["Error"]["Message"] == (
        "1 validation error detected: Value at 'message' failed to satisfy constraint: "
        "Member must have length less than or equal to 4096")


def test_mac_by_alias_and_arn(ctx, kms):
    key = ctx.macs["HMAC_256"]
    alias = f"alias/mac-{uuid.uuid4().hex[:12]}"
    kms.create_alias(AliasName=alias, TargetKeyId=key.key_id)
    by_alias = mac(ctx, alias)
    assert by_alias["KeyId"] == key.arn
    assert verify(ctx, by_alias["Mac"], key.arn)["MacValid"] is True


# -- the test-only key-material hook --

def test_material_of_a_signing_key_matches_its_public_key(emulator, kms):
    key = new_key(kms, "RSA_2048", "SIGN_VERIFY")
    material = emulator.key_material(key.key_id)
    assert material.key_arn == key.arn
    assert spki(material.private_key().public_key()) == key.public_der


def test_material_of_a_symmetric_key_is_raw(emulator, kms):
    material = emulator.key_material(new_key(kms, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").key_id)
    assert material.format == "RAW" and len(material.material) == 32
    with pytest.raises(ValueError):
        material.private_key()


def test_material_of_an_unknown_key_is_404(emulator):
    with pytest.raises(urllib.error.HTTPError) as exc:
        key_material(emulator.endpoint_url, str(uuid.uuid4()))
    assert exc.value.code == 404


def test_material_path_is_get_only(emulator, kms):
    key_id = new_key(kms, "HMAC_224", "GENERATE_VERIFY_MAC").key_id
    url = emulator.endpoint_url + server.KEY_MATERIAL_PATH.format(key_id=key_id)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        assert json.loads(response.read())["KeySpec"] == "HMAC_224"
    with pytest.raises(urllib.error.HTTPError) as exc:
        opener.open(urllib.request.Request(url, data=b"{}", method="POST"), timeout=10)
    assert exc.value.code == 405


def test_material_is_never_faulted(faults, kms):
    key_id = new_key(kms, "HMAC_256", "GENERATE_VERIFY_MAC").key_id
    faults.set_faults(error_code="KMSInternalException", error_rate=1.0)
    assert faults.key_material(key_id).key_spec == "HMAC_256"


def test_material_refuses_non_loopback_clients():
    answers: list[str] = []
    body = server._serve_key_material({"REMOTE_ADDR": "192.0.2.10", "REQUEST_METHOD": "GET"},
                                      lambda status, headers: answers.append(status),
                                      str(uuid.uuid4()))
    assert answers == ["403 Forbidden"]
    assert b"KeyMaterial" not in b"".join(body)
