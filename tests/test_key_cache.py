"""The key cache (kms/keycache.py, docs/design.md "Key cache"): a new process lists the keys a
config names without asking KMS, within key_cache_ttl; the file is 0600 in a 0700 directory and
not read when another user could change it; KMS refusing a key drops it; it is on unless
key_cache = false; a host that forks after the cache answered has children that sign without
reading a file. KMS being asked is observed with the emulator's fault injection: GetPublicKey and
DescribeKey fail, so a key listed anyway came from the cache. Through pkcs11-tool and our C host."""

from __future__ import annotations

import os
import re
import stat

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from hosts import run, tool
from keyseed import seed_key, write_config

LOOKUPS = ["GetPublicKey", "DescribeKey"]


@pytest.fixture(scope="module")
def keys(kms_server):
    client = kms_server.client()
    return {"sign": seed_key(client, "cache-sign", "ECC_NIST_P256", "SIGN_VERIFY"),
            "other": seed_key(client, None, "RSA_2048", "SIGN_VERIFY")}


def _config(tmp_path, kms_server, keys, extra: str = "") -> str:
    return write_config(tmp_path / "c.toml", kms_server, f"{extra}[[token]]\nlabel = \"cached\"\n"
                        f'keys = ["alias/cache-sign", "{keys["other"].arn}"]\n')


def _list(config: str, cache: str, module_path: str) -> tuple[int, str]:
    """pkcs11-tool -O in a new process: (private keys listed, stderr)."""
    env = {**os.environ, "PKCS11_KMS_CONFIG": config, "XDG_CACHE_HOME": cache,
           "PKCS11_KMS_LOG": "info"}
    proc = run([tool("pkcs11-tool", "opensc"), "--module", module_path, "--token-label",
                "cached", "-O"], env, check_stderr=False)
    return proc.stdout.count("Private Key Object"), proc.stderr


def _with_lookups_failing(kms_server):
    return kms_server.set_faults(error_code="KMSInternalException", error_rate=1.0,
                                 operations=LOOKUPS)


def test_a_new_process_lists_named_keys_from_the_cache(tmp_path, kms_server, keys, module_path):
    cache = tmp_path / "cache"
    config = _config(tmp_path, kms_server, keys)
    assert _list(config, str(cache), module_path)[0] == 2
    files = list((cache / "pkcs11-kms").iterdir())
    assert len(files) == 1
    assert stat.S_IMODE((cache / "pkcs11-kms").stat().st_mode) == 0o700
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert keys["other"].arn in files[0].read_text()
    _with_lookups_failing(kms_server)
    try:
        listed, _ = _list(config, str(cache), module_path)
        errors = kms_server.faults()["stats"]["errors"]
    finally:
        kms_server.clear_faults()
    assert (listed, errors) == (2, 0)  # KMS not asked


def test_without_the_cache_kms_is_asked(tmp_path, kms_server, keys, module_path):
    for n, extra in enumerate(("key_cache = false\n", "key_cache_ttl = 0\n")):
        cache = tmp_path / f"cache{n}"
        config = _config(tmp_path, kms_server, keys, extra)
        assert _list(config, str(cache), module_path)[0] == 2
        _with_lookups_failing(kms_server)
        try:
            listed, _ = _list(config, str(cache), module_path)
        finally:
            kms_server.clear_faults()
        assert listed == 0, extra
    assert not (tmp_path / "cache0").exists()  # with key_cache = false nothing is written


def test_a_cache_another_user_could_change_is_not_read(tmp_path, kms_server, keys, module_path):
    cache = tmp_path / "cache"
    config = _config(tmp_path, kms_server, keys)
    assert _list(config, str(cache), module_path)[0] == 2
    (file,) = (cache / "pkcs11-kms").iterdir()
    file.chmod(0o666)
    _with_lookups_failing(kms_server)
    try:
        listed, stderr = _list(config, str(cache), module_path)
    finally:
        kms_server.clear_faults()
    assert listed == 0
    assert "key cache not used" in stderr and str(file) in stderr


def test_kms_refusing_a_key_drops_it_from_the_cache(tmp_path, kms_server, module_path):
    """A key disabled after it was cached: the next process lists it (within the TTL), its first
    use fails, and then no process lists it any more."""
    client = kms_server.client()
    key = seed_key(client, "cache-gone", "ECC_NIST_P256", "SIGN_VERIFY")
    cache = tmp_path / "cache"
    config = write_config(tmp_path / "c.toml", kms_server,
                          '[[token]]\nlabel = "cached"\n'
                          'keys = ["alias/cache-gone"]\n')
    assert _list(config, str(cache), module_path)[0] == 1
    client.disable_key(KeyId=key.key_id)
    assert _list(config, str(cache), module_path)[0] == 1  # the cache's answer, within the TTL
    env = {**os.environ, "PKCS11_KMS_CONFIG": config, "XDG_CACHE_HOME": str(cache)}
    message = tmp_path / "m"
    message.write_bytes(b"data")
    signed = run([tool("pkcs11-tool", "opensc"), "--module", module_path, "--token-label",
                  "cached", "--sign", "-m", "ECDSA-SHA256", "--label", "cache-gone",
                  "-i", str(message), "-o", str(tmp_path / "sig")], env, check_stderr=False)
    assert signed.returncode != 0
    assert _list(config, str(cache), module_path)[0] == 0


@pytest.mark.parametrize("flags", ["2", "3"], ids=["threaded", "threadless"])
def test_children_forked_after_the_cache_answered_sign_without_reading_files(
        tmp_path, kms_server, keys, harness, module_path, flags):
    """nginx's case: the master reads its keys from the cache (no KMS call, nothing of botocore
    imported), forks, and its workers drop privileges. The module imports the KMS stack and makes
    its client before the fork; the child here chroot()s into an empty directory, where it could
    read no Python file, CA bundle or botocore data, and signs on its parent's session."""
    cache = tmp_path / "cache"
    config = write_config(tmp_path / "c.toml", kms_server,
                          '[[token]]\nlabel = "cached"\nkeys = ["alias/cache-sign"]\n')
    assert _list(config, str(cache), module_path)[0] == 1  # the cache is warm
    jail = tmp_path / "jail"
    jail.mkdir()
    env = {**os.environ, "PKCS11_KMS_CONFIG": config, "XDG_CACHE_HOME": str(cache)}
    _with_lookups_failing(kms_server)  # the parent's keys must come from the cache
    try:
        proc = run([harness, module_path, "fork-jail", str(jail), flags], env)
    finally:
        kms_server.clear_faults()
    assert proc.stdout.splitlines()[:2] == ["C_Initialize rv=0x0", "find rv=0x0"], proc.stderr
    child = re.search(r"^child rv=0x0 sig=([0-9a-f]+)$", proc.stdout, re.MULTILINE)
    assert child, proc.stdout + proc.stderr
    assert "child exited=0" in proc.stdout
    signature = bytes.fromhex(child[1])
    digest = bytes((7 * 31 + j) & 0xFF for j in range(32))  # the harness's soak_digest(7)
    public = serialization.load_der_public_key(keys["sign"].public_der)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    n = len(signature) // 2
    public.verify(utils.encode_dss_signature(int.from_bytes(signature[:n], "big"),
                                             int.from_bytes(signature[n:], "big")),
                  digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
