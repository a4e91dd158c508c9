"""Key changes: what the module read of KMS keys belongs to the initialised module (C_Finalize
drops it), and a running module reads the keys again after refresh_interval (docs/design.md,
"Key changes"). Through the real library: python-pkcs11 to initialise, raw cffi calls for exact
return values."""

from __future__ import annotations

import os
import threading
import time

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import p11raw
from keyseed import seed_key, write_config
from pkcs11_kms.ck import CKA, CKF, CKM, CKO, CKR

INTERVAL = 1.0  # refresh_interval of the tests that wait for it


class Raw:
    """The library through its C ABI, for return values python-pkcs11 turns into exceptions."""

    def __init__(self, module_path: str) -> None:
        self.ffi, self.lib = p11raw.load(module_path)

    def open(self, slot: int = 0) -> int:
        handle = self.ffi.new("CK_SESSION_HANDLE *")
        assert self.lib.C_OpenSession(slot, CKF.SERIAL_SESSION, self.ffi.NULL, self.ffi.NULL,
                                      handle) == CKR.OK
        return handle[0]

    def close(self, session: int) -> None:
        assert self.lib.C_CloseSession(session) == CKR.OK

    def find(self, session: int, object_class: int | None = None) -> list[int]:
        count = 0 if object_class is None else 1
        template = self.ffi.new("CK_ATTRIBUTE[]", max(count, 1))
        value = self.ffi.new("CK_ULONG *", object_class or 0)
        template[0].type, template[0].pValue = CKA.CLASS, value
        template[0].ulValueLen = self.ffi.sizeof("CK_ULONG")
        assert self.lib.C_FindObjectsInit(session, template, count) == CKR.OK
        found, handles, n = [], self.ffi.new("CK_OBJECT_HANDLE[]", 64), self.ffi.new("CK_ULONG *")
        while True:
            assert self.lib.C_FindObjects(session, handles, 64, n) == CKR.OK
            found += [handles[i] for i in range(n[0])]
            if n[0] == 0:
                break
        assert self.lib.C_FindObjectsFinal(session) == CKR.OK
        return found

    def attribute(self, session: int, handle: int, kind: int) -> tuple[int, bytes]:
        t = self.ffi.new("CK_ATTRIBUTE *")
        t.type = kind
        rv = self.lib.C_GetAttributeValue(session, handle, t, 1)
        if rv != CKR.OK:
            return rv, b""
        buf = self.ffi.new("char[]", max(t.ulValueLen, 1))
        t.pValue = buf
        rv = self.lib.C_GetAttributeValue(session, handle, t, 1)
        return rv, self.ffi.buffer(buf, t.ulValueLen)[:]

    def value(self, session: int, handle: int, kind: int) -> bytes:
        rv, value = self.attribute(session, handle, kind)
        assert rv == CKR.OK, CKR(rv).name
        return value

    def sign_init(self, session: int, handle: int) -> int:
        mechanism = self.ffi.new("CK_MECHANISM *")
        mechanism.mechanism = CKM.ECDSA_SHA256
        return self.lib.C_SignInit(session, mechanism, handle)

    def sign(self, session: int, data: bytes) -> tuple[int, bytes]:
        out, length = self.ffi.new("CK_BYTE[]", 512), self.ffi.new("CK_ULONG *", 512)
        rv = self.lib.C_Sign(session, data, len(data), out, length)
        return rv, self.ffi.buffer(out, length[0])[:] if rv == CKR.OK else b""

    def private_keys(self, session: int) -> dict[bytes, int]:
        """CKA_ID -> handle of every private key."""
        return {self.value(session, h, CKA.ID): h for h in self.find(session, CKO.PRIVATE_KEY)}


def ckid(key) -> bytes:
    return bytes.fromhex(key.key_id.replace("-", ""))


def verify_p256(public_der: bytes, signature: bytes, data: bytes) -> None:
    """An independent check (cryptography) of a raw r||s ECDSA P-256 signature."""
    public = serialization.load_der_public_key(public_der)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    public.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))


def wait_past(deadline: float) -> None:
    """Wait until time.monotonic() >= deadline: the condition is the clock the module reads."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        assert not threading.Event().wait(remaining)


@pytest.fixture(scope="module")
def lib(module_path):
    library = pkcs11.lib(module_path)
    yield library
    os.environ.pop("PKCS11_KMS_CONFIG", None)


@pytest.fixture(scope="module")
def raw(lib, module_path):
    return Raw(module_path)


def initialise(lib, config: str) -> None:
    """C_Finalize + C_Initialize with `config` (another test module may have initialised)."""
    os.environ["PKCS11_KMS_CONFIG"] = config
    lib.reinitialize()


def token_body(mode: str, alias_prefix: str, keys: list[str], extra: str = "") -> str:
    if mode == "named":
        listed = ", ".join(f'"{k}"' for k in keys)
        return f'{extra}[[token]]\nlabel = "changes"\nkeys = [{listed}]\n'
    return f'{extra}[[token]]\nlabel = "changes"\nalias_prefix = "alias/{alias_prefix}"\n'


# --- after C_Finalize + C_Initialize ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["named", "listed"])
def test_alias_repointed_is_seen_after_reinitialisation(lib, raw, kms_server, tmp_path, mode):
    client = kms_server.client()
    alias = f"kc-rot-{mode}"
    old = seed_key(client, alias, "ECC_NIST_P256", "SIGN_VERIFY")
    new = seed_key(client, None, "ECC_NIST_P256", "SIGN_VERIFY")
    config = write_config(tmp_path / "c.toml", kms_server,
                          token_body(mode, alias, [f"alias/{alias}"], "refresh_interval = 0\n"))
    initialise(lib, config)
    s = raw.open()
    assert set(raw.private_keys(s)) == {ckid(old)}
    client.update_alias(AliasName=f"alias/{alias}", TargetKeyId=new.key_id)
    assert set(raw.private_keys(s)) == {ckid(old)}  # refresh_interval = 0: never read again
    raw.close(s)

    initialise(lib, config)
    s = raw.open()
    keys = raw.private_keys(s)
    assert set(keys) == {ckid(new)}
    handle = keys[ckid(new)]
    answered = client.get_public_key(KeyId=new.key_id)["PublicKey"]
    assert raw.value(s, handle, CKA.PUBLIC_KEY_INFO) == answered
    assert raw.value(s, handle, CKA.LABEL) == alias.encode()
    assert raw.sign_init(s, handle) == CKR.OK
    rv, signature = raw.sign(s, b"rotated")
    assert rv == CKR.OK
    verify_p256(answered, signature, b"rotated")
    raw.close(s)


@pytest.mark.parametrize("mode", ["named", "listed"])
def test_disabled_key_is_gone_after_reinitialisation(lib, raw, kms_server, tmp_path, mode):
    client = kms_server.client()
    prefix = f"kc-dis-{mode}"
    keep = seed_key(client, f"{prefix}-keep", "ECC_NIST_P256", "SIGN_VERIFY")
    going = seed_key(client, f"{prefix}-going", "ECC_NIST_P256", "SIGN_VERIFY")
    config = write_config(
        tmp_path / "c.toml", kms_server,
        token_body(mode, prefix, [f"alias/{prefix}-keep", going.arn], "refresh_interval = 0\n"))
    initialise(lib, config)
    s = raw.open()
    assert set(raw.private_keys(s)) == {ckid(keep), ckid(going)}
    raw.close(s)
    client.disable_key(KeyId=going.key_id)
    initialise(lib, config)
    s = raw.open()
    assert set(raw.private_keys(s)) == {ckid(keep)}
    raw.close(s)


# --- in one running module, after refresh_interval ----------------------------------------------


def test_running_module_sees_changes_after_the_interval(lib, raw, kms_server, tmp_path):
    """Kept keys keep their handles; a disabled key's and a re-pointed alias's old objects go
    (CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID in C_SignInit); an operation begun on the
    disabled key fails at its next call with the KMS error; the re-pointed alias's new key comes."""
    client = kms_server.client()
    keep = seed_key(client, "kc-live-keep", "ECC_NIST_P256", "SIGN_VERIFY")
    going = seed_key(client, "kc-live-going", "ECC_NIST_P256", "SIGN_VERIFY")
    rotated = seed_key(client, "kc-live-rot", "ECC_NIST_P256", "SIGN_VERIFY")
    successor = seed_key(client, None, "ECC_NIST_P256", "SIGN_VERIFY")
    config = write_config(
        tmp_path / "c.toml", kms_server,
        f"refresh_interval = {INTERVAL}\n[[token]]\nlabel = \"live\"\n"
        f'keys = ["alias/kc-live-keep", "{going.key_id}", "alias/kc-live-rot"]\n')
    initialise(lib, config)
    s, active = raw.open(), raw.open()
    before = raw.private_keys(s)
    assert set(before) == {ckid(keep), ckid(going), ckid(rotated)}
    assert raw.sign_init(active, before[ckid(going)]) == CKR.OK  # begun before the change

    changed = time.monotonic()  # the objects above were read before this
    client.disable_key(KeyId=going.key_id)
    client.update_alias(AliasName="alias/kc-live-rot", TargetKeyId=successor.key_id)
    wait_past(changed + INTERVAL)
    after = raw.private_keys(s)
    assert set(after) == {ckid(keep), ckid(successor)}
    assert after[ckid(keep)] == before[ckid(keep)]  # a kept key keeps its handle
    for gone in (before[ckid(going)], before[ckid(rotated)]):
        assert raw.attribute(s, gone, CKA.LABEL)[0] == CKR.OBJECT_HANDLE_INVALID
        assert raw.sign_init(s, gone) == CKR.KEY_HANDLE_INVALID
    # KMS says DisabledException (CKR_KEY_FUNCTION_NOT_PERMITTED), which C_Sign may not return:
    # the spec's list for C_Sign fits it into CKR_FUNCTION_FAILED (core/returns.py).
    assert raw.sign(active, bytes(32))[0] in (CKR.KEY_FUNCTION_NOT_PERMITTED, CKR.FUNCTION_FAILED)
    assert raw.sign(active, bytes(32))[0] == CKR.OPERATION_NOT_INITIALIZED  # it ended
    assert raw.value(s, after[ckid(successor)], CKA.LABEL) == b"kc-live-rot"
    assert raw.sign_init(s, after[ckid(successor)]) == CKR.OK
    rv, signature = raw.sign(s, b"after the interval")
    assert rv == CKR.OK
    verify_p256(successor.public_der, signature, b"after the interval")
    raw.close(s)
    raw.close(active)


def test_listing_token_sees_new_and_removed_keys_after_the_interval(lib, raw, kms_server,
                                                                    tmp_path):
    client = kms_server.client()
    first = seed_key(client, "kc-list-first", "ECC_NIST_P256", "SIGN_VERIFY")
    doomed = seed_key(client, "kc-list-doomed", "ECC_NIST_P256", "SIGN_VERIFY")
    config = write_config(tmp_path / "c.toml", kms_server,
                          f'refresh_interval = {INTERVAL}\n[[token]]\nlabel = "list"\n'
                          'alias_prefix = "alias/kc-list-"\n')
    initialise(lib, config)
    s = raw.open()
    before = raw.private_keys(s)
    assert set(before) == {ckid(first), ckid(doomed)}
    changed = time.monotonic()
    late = seed_key(client, "kc-list-late", "ECC_NIST_P256", "SIGN_VERIFY")
    client.schedule_key_deletion(KeyId=doomed.key_id, PendingWindowInDays=7)
    wait_past(changed + INTERVAL)
    after = raw.private_keys(s)
    assert set(after) == {ckid(first), ckid(late)}
    assert after[ckid(first)] == before[ckid(first)]
    raw.close(s)


def test_failed_refresh_keeps_the_objects_and_logs_one_line(lib, raw, kms_server, tmp_path):
    """A refresh that meets a device failure (throttling after the retries) keeps what it had,
    logs one line, and tries again one interval later."""
    client = kms_server.client()
    key = seed_key(client, "kc-fail", "ECC_NIST_P256", "SIGN_VERIFY")
    log = tmp_path / "module.log"
    config = write_config(tmp_path / "c.toml", kms_server,
                          f'refresh_interval = {INTERVAL}\nmax_attempts = 1\nlog_file = "{log}"\n'
                          '[[token]]\nlabel = "fail"\nkeys = ["alias/kc-fail"]\n')
    initialise(lib, config)
    s = raw.open()
    before = raw.private_keys(s)
    assert set(before) == {ckid(key)}
    changed = time.monotonic()
    kms_server.set_faults(error_code="ThrottlingException", operations=["GetPublicKey"])
    try:
        wait_past(changed + INTERVAL)
        assert raw.private_keys(s) == before  # this call's refresh failed: the same objects
        failed = time.monotonic()
        assert kms_server.faults()["stats"]["errors"] == 1
        assert raw.private_keys(s) == before
        if time.monotonic() - failed < INTERVAL:  # no second attempt within the interval
            assert kms_server.faults()["stats"]["errors"] == 1
    finally:
        kms_server.clear_faults()
    lines = [line for line in log.read_text().splitlines() if "WARNING" in line]
    assert len(lines) == 1, lines
    assert "keeping the keys read before" in lines[0] and "ThrottlingException" in lines[0]
    assert raw.sign_init(s, before[ckid(key)]) == CKR.OK
    rv, signature = raw.sign(s, b"still here")
    assert rv == CKR.OK
    verify_p256(key.public_der, signature, b"still here")
    raw.close(s)
