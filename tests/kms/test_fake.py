"""What FakeKms gives core tests beyond the contract: call log, faults, latency, seeding."""

from __future__ import annotations

import inspect
import threading
import time

import pytest

from pkcs11_kms.ck import CKR
from pkcs11_kms.kms import AwsKms, KmsBackend, KmsError
from pkcs11_kms.kms.fake import FakeKms

PROTOCOL = [name for name in dir(KmsBackend) if not name.startswith("_")]


@pytest.mark.parametrize("cls", [FakeKms, AwsKms])
@pytest.mark.parametrize("name", PROTOCOL)
def test_implements_the_protocol(cls, name):
    expected = inspect.signature(getattr(KmsBackend, name))
    assert list(inspect.signature(getattr(cls, name)).parameters) == list(expected.parameters)


@pytest.fixture
def fake():
    return FakeKms()


def test_call_log(fake):
    meta = fake.create_key("ECC_NIST_P256", "SIGN_VERIFY", alias="web")
    assert fake.calls == []  # seeding is not a KMS call
    fake.get_public_key("alias/web")
    fake.sign(meta.key_id, bytes(32), "DIGEST", "ECDSA_SHA_256")
    with pytest.raises(KmsError):
        fake.describe_key("alias/none")
    fake.generate_random(4)
    assert fake.calls == [("GetPublicKey", "alias/web"), ("Sign", meta.key_id),
                          ("DescribeKey", "alias/none"), ("GenerateRandom", None)]  # fmt: skip
    assert fake.calls_of("Sign") == [meta.key_id]


def test_fail_next(fake):
    meta = fake.create_key("RSA_2048", "SIGN_VERIFY")
    fake.fail_next("Sign", "ThrottlingException", times=2)
    fake.fail_next("GetPublicKey", "KeyUnavailableException", key="alias/other")
    for _ in range(2):
        with pytest.raises(KmsError) as caught:
            fake.sign(meta.key_id, bytes(32), "DIGEST", "RSASSA_PSS_SHA_256")
        assert (caught.value.code, caught.value.rv) == ("ThrottlingException", CKR.DEVICE_ERROR)
        assert caught.value.request_id
    assert fake.sign(meta.key_id, bytes(32), "DIGEST", "RSASSA_PSS_SHA_256")
    assert fake.get_public_key(meta.key_id)  # the fault waits for alias/other


def test_latency_is_outside_any_lock(fake):
    fake.latency = 0.2
    start = time.monotonic()
    threads = [threading.Thread(target=fake.generate_random, args=(4,)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start < 0.6


@pytest.mark.parametrize(
    "spec,usage",
    [("ECC_NIST_P256", "ENCRYPT_DECRYPT"), ("SYMMETRIC_DEFAULT", "SIGN_VERIFY"),
     ("RSA_1024", "SIGN_VERIFY")],
)
def test_create_key_refuses_what_kms_refuses(fake, spec, usage):
    with pytest.raises(KmsError) as caught:
        fake.create_key(spec, usage)
    assert caught.value.code == "ValidationException"


def test_aliases_and_deletion(fake):
    meta = fake.create_key("ECC_NIST_P384", "SIGN_VERIFY", alias="alias/a", tags={"k": "v"})
    fake.create_alias("b", meta.arn)
    with pytest.raises(KmsError):
        fake.create_alias("a", meta.key_id)
    assert {a.name for a in fake.list_aliases()} == {"alias/a", "alias/b"}
    fake.delete_key("alias/b")
    assert fake.list_aliases() == [] and fake.list_keys() == []
    with pytest.raises(KmsError) as caught:
        fake.describe_key(meta.key_id)
    assert caught.value.code == "NotFoundException"


def test_other_region_or_account_is_not_found(fake):
    meta = fake.create_key("ECC_NIST_P256", "SIGN_VERIFY")
    for arn in (meta.arn.replace("eu-west-1", "us-east-1"), meta.arn.replace("1111", "9999")):
        with pytest.raises(KmsError):
            fake.describe_key(arn)


def test_encrypt_limit_is_the_oaep_capacity(fake):
    meta = fake.create_key("RSA_2048", "ENCRYPT_DECRYPT")
    assert fake.decrypt(meta.key_id, fake.encrypt(meta.key_id, bytes(190), "RSAES_OAEP_SHA_256"),
                        "RSAES_OAEP_SHA_256") == bytes(190)  # fmt: skip
    with pytest.raises(KmsError) as caught:
        fake.encrypt(meta.key_id, bytes(191), "RSAES_OAEP_SHA_256")
    assert caught.value.code == "ValidationException"


def test_dry_runs(fake):
    sign = fake.create_key("ECC_NIST_P256", "SIGN_VERIFY")
    decrypt = fake.create_key("RSA_2048", "ENCRYPT_DECRYPT")
    assert fake.dry_run_sign(sign.key_id, "ECDSA_SHA_256") is True
    assert fake.dry_run_decrypt(decrypt.key_id, "RSAES_OAEP_SHA_1") is True
    fake.set_key_state(sign.key_id, "Disabled")
    with pytest.raises(KmsError) as caught:
        fake.dry_run_sign(sign.key_id, "ECDSA_SHA_256")
    assert caught.value.code == "DisabledException"


def test_reused_key_material():
    fake = FakeKms(reuse_key_material=True)
    a, b = (fake.create_key("RSA_4096", "SIGN_VERIFY") for _ in range(2))
    assert fake.get_public_key(a.key_id).der == fake.get_public_key(b.key_id).der
    other = FakeKms()
    c, d = (other.create_key("ECC_NIST_P256", "SIGN_VERIFY") for _ in range(2))
    assert other.get_public_key(c.key_id).der != other.get_public_key(d.key_id).der
