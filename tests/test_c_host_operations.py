"""Every operation from a C host: pkcs11-tool signs, verifies, decrypts and draws random bytes;
openssl checks the results on its own."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from keyseed import key_entries, seed_key, write_config

PKCS11_TOOL = shutil.which("pkcs11-tool")
OPENSSL = shutil.which("openssl")
MESSAGE = b"signed from a C host\n" * 50


@pytest.fixture(scope="module")
def setup(https_kms_server, tmp_path_factory, module_path):
    """A token over HTTPS (the module's TLS runs inside pkcs11-tool) with RSA, EC and OAEP keys."""
    assert PKCS11_TOOL and OPENSSL, "opensc (pkcs11-tool) and openssl must be installed"
    client = https_kms_server.client()
    keys = {
        "rsa": seed_key(client, None, "RSA_2048", "SIGN_VERIFY"),
        "ec": seed_key(client, None, "ECC_NIST_P384", "SIGN_VERIFY"),
        "oaep": seed_key(client, None, "RSA_3072", "ENCRYPT_DECRYPT"),
    }
    d = tmp_path_factory.mktemp("chost")
    entries = key_entries(keys)
    config = write_config(d / "config.toml", https_kms_server,
                          f'[[token]]\nlabel = "chost"\nkeys = [{entries}]\n')
    for name, k in keys.items():
        (d / f"{name}.der").write_bytes(k.public_der)
        subprocess.run([OPENSSL, "pkey", "-pubin", "-inform", "DER", "-in", d / f"{name}.der",
                        "-out", d / f"{name}.pem"], check=True)
    (d / "msg").write_bytes(MESSAGE)
    env = {**os.environ, "PKCS11_KMS_CONFIG": config}
    ids = {name: k.key_id.replace("-", "") for name, k in keys.items()}
    return d, env, module_path, ids


def tool(setup, *args, check=True):
    d, env, module, ids = setup
    # pkcs11-tool picks the key to sign or decrypt with by --id only (--label is ignored there).
    args = [a if not (isinstance(a, str) and a.startswith("key:")) else ids[a[4:]] for a in args]
    r = subprocess.run([PKCS11_TOOL, "--module", module, *map(str, args)], env=env,
                       capture_output=True, timeout=60)
    assert r.returncode >= 0, f"pkcs11-tool died by signal {-r.returncode}"
    assert b"Traceback" not in r.stderr, r.stderr.decode()
    if check:
        assert r.returncode == 0, r.stderr.decode()
    return r


def openssl(*args, **kw):
    return subprocess.run([OPENSSL, *map(str, args)], capture_output=True, timeout=60, **kw)


@pytest.mark.parametrize("mechanism, digest, pss", [
    ("SHA256-RSA-PKCS", "sha256", False),
    ("SHA384-RSA-PKCS", "sha384", False),
    ("SHA512-RSA-PKCS", "sha512", False),
    ("SHA256-RSA-PKCS-PSS", "sha256", True),
    ("SHA512-RSA-PKCS-PSS", "sha512", True),
])
def test_rsa_sign_verified_by_openssl(setup, mechanism, digest, pss):
    d = setup[0]
    sig = d / f"{mechanism}.sig"
    tool(setup, "--sign", "-m", mechanism, "--id", "key:rsa", "-i", d / "msg", "-o", sig)
    args = ["dgst", f"-{digest}", "-verify", d / "rsa.pem", "-signature", sig]
    if pss:
        args += ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"]
    r = openssl(*args, d / "msg")
    assert r.returncode == 0 and b"Verified OK" in r.stdout, r.stdout + r.stderr
    # The module verifies its own signature, and refuses a flipped one.
    r = tool(setup, "--verify", "-m", mechanism, "--id", "key:rsa", "-i", d / "msg",
             "--signature-file", sig)
    assert b"Signature is valid" in r.stdout
    bad = d / f"{mechanism}.bad"
    raw = bytearray(sig.read_bytes())
    raw[10] ^= 1
    bad.write_bytes(bytes(raw))
    r = tool(setup, "--verify", "-m", mechanism, "--id", "key:rsa", "-i", d / "msg",
             "--signature-file", bad, check=False)
    # pkcs11-tool's words for CKR_SIGNATURE_INVALID: on stdout (OpenSC 0.23), stderr (0.26)
    assert b"Invalid signature" in r.stdout + r.stderr


@pytest.mark.parametrize("mechanism, digest", [("ECDSA-SHA256", "sha256"), ("ECDSA-SHA384", "sha384")])
def test_ecdsa_sign_verified_by_openssl(setup, mechanism, digest):
    d = setup[0]
    sig = d / f"{mechanism}.sig"
    tool(setup, "--sign", "-m", mechanism, "--id", "key:ec", "-i", d / "msg", "-o", sig,
         "--signature-format", "openssl")
    r = openssl("dgst", f"-{digest}", "-verify", d / "ec.pem", "-signature", sig, d / "msg")
    assert r.returncode == 0 and b"Verified OK" in r.stdout, r.stdout + r.stderr


def test_raw_ecdsa_over_an_openssl_digest(setup):
    d = setup[0]
    digest = d / "digest"
    digest.write_bytes(openssl("dgst", "-sha512", "-binary", d / "msg", check=True).stdout)
    sig = d / "raw-ecdsa.sig"
    tool(setup, "--sign", "-m", "ECDSA", "--id", "key:ec", "-i", digest, "-o", sig,
         "--signature-format", "openssl")
    r = openssl("pkeyutl", "-verify", "-pubin", "-inkey", d / "ec.pem", "-in", digest,
                "-sigfile", sig)
    assert r.returncode == 0 and b"Signature Verified Successfully" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("digest", ["sha1", "sha256"])
def test_decrypt_what_openssl_encrypted(setup, digest):
    d = setup[0]
    secret = os.urandom(48)
    (d / "secret").write_bytes(secret)
    ct = d / f"secret.{digest}.enc"
    r = openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", d / "oaep.pem", "-in", d / "secret",
                "-out", ct, "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", f"rsa_oaep_md:{digest}",
                "-pkeyopt", f"rsa_mgf1_md:{digest}")
    assert r.returncode == 0, r.stderr
    out = d / f"secret.{digest}.dec"
    hash_name, mgf = {"sha1": ("SHA-1", "MGF1-SHA1"), "sha256": ("SHA256", "MGF1-SHA256")}[digest]
    tool(setup, "--decrypt", "-m", "RSA-PKCS-OAEP", "--hash-algorithm", hash_name, "--mgf", mgf,
         "--id", "key:oaep", "-i", ct, "-o", out)
    assert out.read_bytes() == secret


def test_generate_random(setup):
    a = tool(setup, "--generate-random", "3000").stdout
    b = tool(setup, "--generate-random", "3000").stdout
    assert len(a) == len(b) == 3000 and a != b


def test_sha1_is_refused_cleanly(setup):
    d = setup[0]
    r = tool(setup, "--sign", "-m", "SHA1-RSA-PKCS", "--id", "key:rsa", "-i", d / "msg", "-o",
             d / "sha1.sig", check=False)
    assert r.returncode != 0
    assert b"CKR_MECHANISM_INVALID" in r.stdout + r.stderr


def test_pkcs11_tool_test_suite(setup, https_kms_server, tmp_path):
    """pkcs11-tool --test on one token per key: the EC and the decryption tokens pass; the RSA
    signing token passes its four signature functions, then stops where pkcs11-tool signs a SHA-1
    DigestInfo with CKM_RSA_PKCS, which KMS cannot sign (CKR_DATA_INVALID): docs/mechanisms.md."""
    d, env, module, ids = setup
    config = (d / "config.toml").read_text().replace('label = "chost"', "token_per_key = true")
    per_key = tmp_path / "per-key.toml"
    per_key.write_text(config)
    env = {**env, "PKCS11_KMS_CONFIG": str(per_key)}

    def run(slot_label):
        r = subprocess.run([PKCS11_TOOL, "--module", module, "--token-label", slot_label, "--test"],
                           env=env, capture_output=True, timeout=120)
        assert r.returncode >= 0 and b"Traceback" not in r.stderr
        return r

    for label in ("ec", "oaep"):
        r = run(label)
        assert r.returncode == 0 and b"No errors" in r.stdout, r.stdout + r.stderr
    r = run("rsa")
    assert b"all 4 signature functions seem to work" in r.stdout, r.stdout + r.stderr
    assert r.returncode != 0 and b"CKR_DATA_INVALID" in r.stderr
