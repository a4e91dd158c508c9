"""Reading a token's keys: a key KMS refuses is left out (one log line) while the other keys and
the certificates stay; a device failure fails the load and the next call retries; listing runs
its per-key requests concurrently and counts as expected on 1,000 keys (docs/design.md,
"Reading the keys")."""

from __future__ import annotations

import base64
import concurrent.futures
import datetime
import json
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keyseed import SeededKey, seed_key
from pkcs11_kms.ck import CKA, CKO, CKR
from pkcs11_kms.kms import AwsKms
from test_key_changes import (  # noqa: F401 - lib and raw are fixtures
    ckid, initialise, lib, raw, wait_past)

DENY_DESCRIBE = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Deny", "Principal": "*", "Action": "kms:DescribeKey", "Resource": "*"}]})


def config_file(path, kms_server, region: str, body: str) -> str:
    path.write_text(f'region = "{region}"\nendpoint_url = "{kms_server.endpoint_url}"\n' + body)
    return str(path)


def certificate(subject: str, public_key=None, ca: bool = False) -> x509.Certificate:
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(public_key or issuer_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))


def pem_of(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def leaf_for(key) -> x509.Certificate:
    return certificate(f"{key.alias} leaf", serialization.load_der_public_key(key.public_der))


# --- a key KMS refuses is left out ---------------------------------------------------------------

REFUSALS_REGION = "ap-southeast-2"  # the listing sees only this module's keys


@pytest.fixture(scope="module")
def refusals(kms_server, tmp_path_factory):
    """disc-a and disc-b usable; disc-denied's policy denies DescribeKey; disc-off disabled;
    disc-sym symmetric; certificates of disc-a and disc-denied, and a CA."""
    client = kms_server.client(region=REFUSALS_REGION)
    keys = {name: seed_key(client, name, "ECC_NIST_P256", "SIGN_VERIFY")
            for name in ("disc-a", "disc-b", "disc-off")}
    meta = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY",
                             Policy=DENY_DESCRIBE)["KeyMetadata"]
    client.create_alias(AliasName="alias/disc-denied", TargetKeyId=meta["KeyId"])
    keys["disc-denied"] = SeededKey(
        meta["KeyId"], meta["Arn"], "disc-denied", "ECC_NIST_P256", "SIGN_VERIFY",
        client.get_public_key(KeyId=meta["KeyId"])["PublicKey"])
    keys["disc-sym"] = seed_key(client, "disc-sym", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")
    client.disable_key(KeyId=keys["disc-off"].key_id)
    certs = tmp_path_factory.mktemp("certs") / "certs.pem"
    certs.write_bytes(pem_of(leaf_for(keys["disc-a"]), leaf_for(keys["disc-denied"]),
                             certificate("Discovery CA", ca=True)))
    keys["certificates"] = certs  # type: ignore[assignment]
    return keys


def contents(raw, slot: int = 0) -> tuple[set[bytes], list[bytes]]:
    """(CKA_ID of each private key, CKA_LABEL of each certificate) of the token in `slot`."""
    s = raw.open(slot)
    try:
        keys = {raw.value(s, h, CKA.ID) for h in raw.find(s, CKO.PRIVATE_KEY)}
        certs = sorted(raw.value(s, h, CKA.LABEL) for h in raw.find(s, CKO.CERTIFICATE))
        return keys, certs
    finally:
        raw.close(s)


def log_lines(log, *needles: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if all(n in line for n in needles)]


def test_listing_leaves_out_a_denied_key_and_keeps_the_rest(lib, raw, kms_server, refusals,
                                                            tmp_path):
    log = tmp_path / "module.log"
    config = config_file(tmp_path / "c.toml", kms_server, REFUSALS_REGION,
                         f'log_file = "{log}"\nlog_level = "info"\n[[token]]\nlabel = "all"\n'
                         f'certificates = ["{refusals["certificates"]}"]\n')
    initialise(lib, config)
    keys, certs = contents(raw)
    assert keys == {ckid(refusals["disc-a"]), ckid(refusals["disc-b"])}
    # the denied key's certificate stays, as a certificate without its key
    assert certs == [b"Discovery CA", b"disc-a", b"disc-denied leaf"]
    denied = log_lines(log, refusals["disc-denied"].key_id)
    assert len(denied) == 1 and "AccessDeniedException" in denied[0], denied
    assert len(log_lines(log, refusals["disc-off"].key_id)) == 1


def test_named_keys_leave_out_refused_keys_and_keep_the_rest(lib, raw, kms_server, refusals,
                                                             tmp_path):
    log = tmp_path / "module.log"
    missing = "arn:aws:kms:ap-southeast-2:123456789012:key/00000000-0000-0000-0000-000000000000"
    config = config_file(
        tmp_path / "c.toml", kms_server, REFUSALS_REGION,
        f'log_file = "{log}"\nlog_level = "info"\n[[token]]\nlabel = "named"\n'
        f'keys = ["alias/disc-a", "alias/disc-nowhere", "{missing}", "alias/disc-off", '
        f'"alias/disc-sym", "alias/disc-b"]\ncertificates = ["{refusals["certificates"]}"]\n')
    initialise(lib, config)
    keys, certs = contents(raw)
    assert keys == {ckid(refusals["disc-a"]), ckid(refusals["disc-b"])}
    assert certs == [b"Discovery CA", b"disc-a", b"disc-denied leaf"]
    for name, code in (("alias/disc-nowhere", "NotFoundException"),
                       (missing, "NotFoundException"), ("alias/disc-off", "DisabledException"),
                       ("alias/disc-sym", "SYMMETRIC_DEFAULT / usage ENCRYPT_DECRYPT is not supported")):
        lines = log_lines(log, f"skipping {name}:")
        assert len(lines) == 1 and code in lines[0], (name, lines)
    assert not log_lines(log, "KMS GetPublicKey failed")  # the skip line is the only one


def test_access_denied_on_one_named_key(lib, raw, kms_server, refusals, tmp_path):
    """IAM denying GetPublicKey on one key (the emulator refuses the first request): one key
    goes, the other and every certificate stay."""
    config = config_file(
        tmp_path / "c.toml", kms_server, REFUSALS_REGION,
        f'[[token]]\nlabel = "denied"\nkeys = ["alias/disc-a", "alias/disc-b"]\n'
        f'certificates = ["{refusals["certificates"]}"]\n')
    initialise(lib, config)
    kms_server.set_faults(error_code="AccessDeniedException", operations=["GetPublicKey"],
                          max_faults=1)
    try:
        keys, certs = contents(raw)
        assert kms_server.faults()["stats"]["errors"] == 1
    finally:
        kms_server.clear_faults()
    a, b = ckid(refusals["disc-a"]), ckid(refusals["disc-b"])
    assert keys in ({a}, {b})
    assert len(certs) == 3


@pytest.mark.parametrize("mode, operation", [("named", "GetPublicKey"),
                                             ("listed", "DescribeKey"), ("listed", "ListKeys")])
def test_device_failure_fails_the_load_and_the_next_call_retries(lib, raw, kms_server, refusals,
                                                                 tmp_path, mode, operation):
    token = ('keys = ["alias/disc-a", "alias/disc-b"]\n' if mode == "named"
             else 'alias_prefix = "alias/disc-"\n')
    config = config_file(tmp_path / "c.toml", kms_server, REFUSALS_REGION,
                         f'max_attempts = 1\n[[token]]\nlabel = "device"\n{token}')
    initialise(lib, config)
    s = raw.open()
    kms_server.set_faults(error_code="ThrottlingException", operations=[operation])
    try:
        template = raw.ffi.new("CK_ATTRIBUTE[]", 1)
        assert raw.lib.C_FindObjectsInit(s, template, 0) == CKR.DEVICE_ERROR
    finally:
        kms_server.clear_faults()
    assert {raw.value(s, h, CKA.ID) for h in raw.find(s, CKO.PRIVATE_KEY)} == {
        ckid(refusals["disc-a"]), ckid(refusals["disc-b"])}
    raw.close(s)


# --- listing many keys ---------------------------------------------------------------------------

MANY_REGION = "us-west-2"  # the 1,000 keys stay out of the other tests' listings
MANY = 1000


@pytest.fixture(scope="module")
def many(kms_server):
    """1,000 P-256 signing keys (10 with an alias), and 6 the token must leave out: 3 disabled,
    2 symmetric, 1 whose policy denies DescribeKey."""
    local = threading.local()

    def create(i: int) -> str:
        if not hasattr(local, "client"):
            local.client = kms_server.client(region=MANY_REGION)
        meta = local.client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
        key_id = meta["KeyMetadata"]["KeyId"]
        if i < 10:
            local.client.create_alias(AliasName=f"alias/many-{i}", TargetKeyId=key_id)
        return key_id

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        usable = list(pool.map(create, range(MANY), timeout=600))
    client = kms_server.client(region=MANY_REGION)
    for _ in range(3):
        off = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
        client.disable_key(KeyId=off["KeyId"])
    for _ in range(2):
        client.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")
    client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY", Policy=DENY_DESCRIBE)
    print(f"\nseeded {MANY + 6} keys in {time.monotonic() - start:.1f}s")
    return usable


def test_listing_a_thousand_keys(lib, raw, kms_server, many, tmp_path, capsys):
    """Every usable key is found; the emulator sees ListKeys, ListAliases, then DescribeKey of
    every key and GetPublicKey of every usable one, several at once (each answer takes 20 ms, as
    in a Region); a refresh asks no GetPublicKey again."""
    total = MANY + 6
    interval = 1.0
    config = config_file(tmp_path / "c.toml", kms_server, MANY_REGION,
                         f"refresh_interval = {interval}\n")
    initialise(lib, config)
    s = raw.open()
    # Also resets the emulator's counters.
    kms_server.set_faults(latency_ms=20, operations=["DescribeKey", "GetPublicKey"])
    try:
        start = time.monotonic()
        handles = raw.find(s, CKO.PRIVATE_KEY)  # C_FindObjectsInit reads the keys
        loaded = time.monotonic()
        stats = kms_server.faults()["stats"]
        first = stats["requests"]
        wait_past(loaded + interval)
        again = time.monotonic()
        assert raw.find(s, CKO.PRIVATE_KEY) == handles  # read again: the same objects and handles
        refreshed = time.monotonic()
        second = kms_server.faults()["stats"]["requests"] - first
    finally:
        kms_server.clear_faults()
    with capsys.disabled():
        print(f"\nlisting {total} keys at 20 ms per key request: {loaded - start:.2f}s, "
              f"{first} requests ({stats['max_in_flight']} at most in flight); "
              f"reading them again: {refreshed - again:.2f}s, {second} requests")
    assert stats["max_in_flight"] > 1
    assert len(handles) == MANY
    assert first == 2 + total + MANY  # ListKeys, ListAliases, DescribeKey each, GetPublicKey
    assert second == 2 + total  # the public keys of the same key ARNs are known
    ids = {raw.value(s, h, CKA.ID) for h in handles}
    assert ids == {bytes.fromhex(k.replace("-", "")) for k in many}
    labels = {raw.value(s, h, CKA.LABEL) for h in handles}
    assert {f"many-{i}".encode() for i in range(10)} <= labels
    raw.close(s)


# --- the batches keep KMS's pagination -----------------------------------------------------------


def test_batches_follow_markers():
    from kms.kmstest import ScriptedKms

    scripted = ScriptedKms()
    try:
        scripted.reply("ListKeys", {"Keys": [{"KeyId": "a"}], "Truncated": True,
                                    "NextMarker": "k1"})
        scripted.reply("ListKeys", {"Keys": [{"KeyId": "b"}], "Truncated": False})
        scripted.reply("ListAliases", {"Aliases": [{"AliasName": "alias/a", "TargetKeyId": "a"}],
                                       "Truncated": True, "NextMarker": "a1"})
        scripted.reply("ListAliases", {"Aliases": [{"AliasName": "alias/b"}]})
        backend = AwsKms(scripted.connection())
        key_ids, aliases = backend.inventory()
        assert key_ids == ["a", "b"]
        assert [(a.name, a.target_key_id) for a in aliases] == [("alias/a", "a"), ("alias/b", None)]
        pages = {op: [p.get("Marker") for o, p in scripted.requests if o == op]
                 for op in ("ListKeys", "ListAliases")}
        assert pages == {"ListKeys": [None, "k1"], "ListAliases": [None, "a1"]}
        assert all(p["Limit"] > 1 for o, p in scripted.requests)

        arn = "arn:aws:kms:eu-west-1:111122223333:key/k-1"
        der = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        scripted.reply("DescribeKey", {"KeyMetadata": {
            "KeyId": "k-1", "Arn": arn, "KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY",
            "KeyState": "Enabled"}})
        scripted.reply("ListResourceTags", {"Tags": [{"TagKey": "x", "TagValue": "1"}],
                                            "Truncated": True, "NextMarker": "t1"})
        scripted.reply("ListResourceTags", {"Tags": [{"TagKey": "y", "TagValue": "2"}]})
        scripted.reply("GetPublicKey", {"KeyId": arn, "PublicKey": base64.b64encode(der).decode(),
                                        "KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"})
        (read,) = backend.read_keys(["k-1"], lambda meta, tags: tags is None or tags["y"] == "2",
                                    with_tags=True)
        assert read.tags == {"x": "1", "y": "2"} and read.public_key.der == der
        tag_markers = [p.get("Marker") for o, p in scripted.requests if o == "ListResourceTags"]
        assert tag_markers == [None, "t1"]
    finally:
        scripted.close()


# --- the module lock is not held while KMS answers -----------------------------------------------


def test_a_slow_key_read_leaves_the_other_calls_free(lib, raw, kms_server, refusals, tmp_path):
    """While one thread waits for KMS to answer slot 0's first read, another opens and closes
    sessions and reads slot 1's objects: no module-wide lock is held across a KMS call."""
    config = config_file(tmp_path / "c.toml", kms_server, REFUSALS_REGION,
                         '[[token]]\nlabel = "slow"\nkeys = ["alias/disc-a"]\n'
                         '[[token]]\nlabel = "ready"\nkeys = ["alias/disc-b"]\n')
    initialise(lib, config)
    ready = raw.open(1)
    assert len(raw.find(ready, CKO.PRIVATE_KEY)) == 1  # slot 1 has read its keys
    slow = raw.open(0)
    result: list[int] = []
    kms_server.set_faults(latency_ms=5000, operations=["GetPublicKey"])
    try:
        reader = threading.Thread(
            target=lambda: result.append(len(raw.find(slow, CKO.PRIVATE_KEY))))
        reader.start()
        deadline = time.monotonic() + 30
        while kms_server.faults()["stats"]["delayed"] == 0:  # the reader's request has arrived
            assert time.monotonic() < deadline and reader.is_alive()
            time.sleep(0.05)
        other = raw.open(0)
        raw.close(other)
        (handle,) = raw.find(ready, CKO.PRIVATE_KEY)
        assert raw.value(ready, handle, CKA.ID) == ckid(refusals["disc-b"])
        assert reader.is_alive()  # all of the above ran while slot 0 waited for KMS
        reader.join(60)
        assert not reader.is_alive() and result == [1]
    finally:
        kms_server.clear_faults()
    raw.close(slow)
    raw.close(ready)
