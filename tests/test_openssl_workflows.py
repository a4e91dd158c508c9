"""Issue #5: the original OpenSSL KMS engine's workflows, through this module with OpenSSL 3.0 and
libp11's pkcs11 engine, keys named by RFC 7512 pkcs11: URIs (docs/openssl.md shows each one).

The emulator is served over HTTPS (real KMS is HTTPS), so the module's own TLS runs inside the
openssl (or curl) process that loaded it. The engine is configured with an OPENSSL_CONF file made
from conf/openssl-engine.cnf. Every result is checked independently of the engine and the module:
signatures and certificates with plain openssl (no engine config) and the KMS public key,
plaintext byte for byte, TLS handshakes by openssl/curl peers that verify the token key's
signature.

Every tool is required: a tool missing in CI fails its tests instead of skipping them.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hosts import free_port, tool
from keyseed import SeededKey, seed_key, write_config

ENGINE = Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so")
ENGINE_CONF = Path(__file__).resolve().parents[1] / "conf" / "openssl-engine.cnf"
TOKEN = "web"
# name -> (object label, KMS key spec, key usage). Aliases get an "owf-" prefix: other test
# modules seed keys on the same session-wide emulator.
KEYS = {
    "rsa": ("web-tls", "RSA_2048", "SIGN_VERIFY"),
    "ec": ("web-ec", "ECC_NIST_P256", "SIGN_VERIFY"),
    "ca": ("ca", "ECC_NIST_P384", "SIGN_VERIFY"),
    "dec": ("decrypt", "RSA_3072", "ENCRYPT_DECRYPT"),
}
TIMEOUT = 60
SAN = "subjectAltName=DNS:localhost,IP:127.0.0.1"


# ---- helpers -------------------------------------------------------------------------------------


def run(cmd: list[str], env: dict[str, str], *, ok: bool = True, timeout: float = TIMEOUT,
        input: bytes | str | None = None, text: bool = True) -> subprocess.CompletedProcess:
    """Runs a host to completion. It must never die by a signal nor show a Python traceback; with
    ok=True it must succeed."""
    proc = subprocess.run(
        [str(c) for c in cmd], env=env, capture_output=True, text=text, timeout=timeout,
        input=input, stdin=None if input is not None else subprocess.DEVNULL,
    )
    stderr = proc.stderr if text else proc.stderr.decode(errors="replace")
    assert proc.returncode >= 0, (
        f"{cmd[0]} {cmd[1]} died by signal {signal.Signals(-proc.returncode).name}: {stderr}")
    assert "Traceback" not in stderr, stderr
    if ok:
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{stderr}"
    return proc


def uri(label: str, kind: str = "private") -> str:
    return f"pkcs11:token={TOKEN};object={label};type={kind}"


def id_uri(key: SeededKey, kind: str) -> str:
    """The key by CKA_ID (the key id's 16 bytes, percent-encoded) instead of its label."""
    ckid = bytes.fromhex(key.key_id.replace("-", ""))
    return f"pkcs11:token={TOKEN};id={''.join(f'%{b:02X}' for b in ckid)};type={kind}"


def pem_blocks(text: str, kind: str) -> list[str]:
    return re.findall(rf"-----BEGIN {kind}-----\n.*?\n-----END {kind}-----\n", text, re.S)


def cert_public_der(path: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class Workflows:
    """Everything the workflows share: keys on one token, configs, certificates, environments."""

    dir: Path
    keys: dict[str, SeededKey]
    env: dict[str, str]  # engine config + the token config (with the certificates)
    plain: dict[str, str]  # no engine, no module: the independent verifier's environment
    openssl: str
    pub: dict[str, Path] = field(default_factory=dict)  # public keys exported through the engine
    cert: dict[str, Path] = field(default_factory=dict)  # certificates of the token keys

    def ossl(self, *args, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
        return run([self.openssl, *args], self.env if env is None else env, **kw)

    def plain_ossl(self, *args, **kw) -> subprocess.CompletedProcess:
        return run([self.openssl, *args], self.plain, **kw)

    def label(self, name: str) -> str:
        return KEYS[name][0]

    def key_form(self, option: str = "-keyform") -> list[str]:
        """What tells openssl that a key option names a token key: libp11's engine needs this;
        pkcs11-provider (tests/test_openssl_provider.py) takes the URI as it is."""
        return ["-engine", "pkcs11", option, "engine"]


def engine_conf_text(module_path: str, init_args: str | None = None) -> str:
    """conf/openssl-engine.cnf with its placeholder module path replaced (the file we ship)."""
    text = ENGINE_CONF.read_text()
    assert re.search(r"^MODULE_PATH = /\S+$", text, re.M), "conf/openssl-engine.cnf: MODULE_PATH"
    assert re.search(rf"^dynamic_path = {re.escape(str(ENGINE))}$", text, re.M)
    text = re.sub(r"^MODULE_PATH = .*$", f"MODULE_PATH = {module_path}", text, flags=re.M)
    if init_args:
        text = re.sub(r"^# INIT_ARGS = .*$", f"INIT_ARGS = {init_args}", text, flags=re.M)
        assert f"\nINIT_ARGS = {init_args}\n" in text, "conf/openssl-engine.cnf: # INIT_ARGS"
    return text


def token_config(path: Path, server, keys: dict[str, SeededKey], certs: list[Path]) -> str:
    entries = ", ".join(f'{{ key = "alias/owf-{KEYS[n][0]}", label = "{KEYS[n][0]}" }}'
                        for n in keys)
    body = f'[[token]]\nlabel = "{TOKEN}"\nkeys = [{entries}]\n'
    if certs:
        body += "certificates = [" + ", ".join(f'"{c}"' for c in certs) + "]\n"
    return write_config(path, server, body)


# ---- the token: keys, engine config, certificates made with the engine --------------------------


@pytest.fixture(scope="module")
def wf(https_kms_server, module_path, tmp_path_factory) -> Workflows:
    """Four KMS keys on one token `web`; their public keys exported through the engine; a
    self-signed certificate for each signing key and a CA, made with the engine (req -x509); a
    certificate for the decryption key issued by that CA; then the token's config with those
    certificates, the one every test uses."""
    assert ENGINE.is_file(), f"{ENGINE} missing: install libengine-pkcs11-openssl"
    openssl = tool("openssl")
    d = tmp_path_factory.mktemp("openssl-workflows")
    client = https_kms_server.client()
    keys = {n: seed_key(client, f"owf-{label}", spec, usage)
            for n, (label, spec, usage) in KEYS.items()}

    conf = d / "openssl-engine.cnf"
    conf.write_text(engine_conf_text(module_path))
    plain = {k: v for k, v in os.environ.items()
             if k not in ("OPENSSL_CONF", "PKCS11_KMS_CONFIG", "OPENSSL_ENGINES")}
    bare = token_config(d / "bare.toml", https_kms_server, keys, [])
    assert "ca_bundle" in Path(bare).read_text()  # the module's HTTPS trusts the emulator's CA
    w = Workflows(d, keys, dict(plain, OPENSSL_CONF=str(conf), PKCS11_KMS_CONFIG=bare), plain,
                  openssl)

    # Workflow 1 as set-up: every public key out through the engine, equal to KMS's.
    for name, key in keys.items():
        w.pub[name] = d / f"{name}.pub.pem"
        w.ossl("pkey", "-engine", "pkcs11", "-inform", "engine", "-in",
               uri(w.label(name), "public"), "-pubout", "-out", w.pub[name])
        der = w.plain_ossl("pkey", "-pubin", "-in", w.pub[name], "-outform", "DER",
                           text=False).stdout
        assert der == key.public_der, f"{name}: the engine's public key is not KMS's"

    # Self-signed certificates made by the token keys (workflow 4's req -x509).
    for name, subject, extra in [
        ("rsa", "/CN=localhost/O=pkcs11-kms/OU=rsa", ["-addext", SAN]),
        ("ec", "/CN=localhost/O=pkcs11-kms/OU=ec", ["-addext", SAN]),
        ("ca", "/CN=pkcs11-kms test CA", ["-addext", "basicConstraints=critical,CA:TRUE",
                                          "-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
    ]:
        w.cert[name] = d / f"{name}.pem"
        w.ossl("req", "-new", "-x509", "-engine", "pkcs11", "-keyform", "engine",
               "-key", uri(w.label(name)), "-subj", subject, "-days", "30", *extra,
               "-out", w.cert[name])
        w.plain_ossl("verify", "-CAfile", w.cert[name], w.cert[name])
        assert cert_public_der(w.cert[name]) == keys[name].public_der

    # The decryption key cannot sign its own request: the token CA certifies its public key
    # (x509 -req -force_pubkey over a throwaway request).
    csr = d / "decrypt-subject.csr"
    w.plain_ossl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", d / "throwaway.key", "-subj", "/CN=pkcs11-kms decryption key",
                 "-out", csr)
    ext = d / "decrypt-ext.cnf"
    ext.write_text("keyUsage = critical,keyEncipherment\nextendedKeyUsage = emailProtection\n")
    w.cert["dec"] = d / "dec.pem"
    w.ossl("x509", "-req", "-in", csr, "-force_pubkey", w.pub["dec"], "-CA", w.cert["ca"],
           "-CAkey", uri(w.label("ca")), "-CAkeyform", "engine", "-engine", "pkcs11",
           "-set_serial", "0x5EED", "-days", "30", "-extfile", ext, "-out", w.cert["dec"])
    w.plain_ossl("verify", "-CAfile", w.cert["ca"], w.cert["dec"])
    assert cert_public_der(w.cert["dec"]) == keys["dec"].public_der

    # From here on the token also holds the certificates (curl loads one from it).
    full = token_config(d / "config.toml", https_kms_server, keys, list(w.cert.values()))
    w.env = dict(w.env, PKCS11_KMS_CONFIG=full)
    return w


# ---- 1. export the public key --------------------------------------------------------------------


@pytest.mark.parametrize("name, how, kind", [
    ("rsa", "object", "public"),
    ("ec", "id", "public"),
    ("ca", "object", "private"),
    ("dec", "id", "private"),
])
def test_export_public_key(wf, name, how, kind):
    """`openssl pkey -engine pkcs11 -inform engine -in URI -pubout -text`: KMS's public key, by
    label or by CKA_ID, from the public or the private key object."""
    key = wf.keys[name]
    target = uri(wf.label(name), kind) if how == "object" else id_uri(key, kind)
    proc = wf.ossl("pkey", "-engine", "pkcs11", "-inform", "engine", "-in", target,
                   "-pubout", "-text")
    blocks = pem_blocks(proc.stdout, "PUBLIC KEY")
    assert len(blocks) == 1, proc.stdout
    pub = wf.dir / f"export-{name}-{how}-{kind}.pem"
    pub.write_text(blocks[0])
    der = wf.plain_ossl("pkey", "-pubin", "-in", pub, "-outform", "DER", text=False).stdout
    assert der == key.public_der
    # The text dump is plain openssl's dump of KMS's key.
    reference = wf.dir / f"kms-{name}.der"
    reference.write_bytes(key.public_der)
    expected = wf.plain_ossl("pkey", "-pubin", "-inform", "DER", "-in", reference,
                             "-text_pub", "-noout").stdout
    assert expected.strip() and expected in proc.stdout


def test_engine_config_init_args(wf, module_path):
    """The token config named in the engine section (INIT_ARGS -> C_Initialize's pReserved)
    instead of $PKCS11_KMS_CONFIG."""
    conf = wf.dir / "openssl-init-args.cnf"
    conf.write_text(engine_conf_text(module_path, init_args=wf.env["PKCS11_KMS_CONFIG"]))
    env = dict(wf.plain, OPENSSL_CONF=str(conf))
    proc = wf.ossl("pkey", "-engine", "pkcs11", "-inform", "engine", "-in",
                   uri(wf.label("ec"), "public"), "-pubout", "-outform", "DER", env=env,
                   text=False)
    assert proc.stdout == wf.keys["ec"].public_der


# ---- 2. pkeyutl -sign / -verify ------------------------------------------------------------------

SIGN_CASES = [
    ("rsa", "pkcs1", "sha256"), ("rsa", "pkcs1", "sha384"), ("rsa", "pkcs1", "sha512"),
    ("rsa", "pss", "sha256"), ("rsa", "pss", "sha384"), ("rsa", "pss", "sha512"),
    ("ec", "ecdsa", "sha256"), ("ec", "ecdsa", "sha384"), ("ec", "ecdsa", "sha512"),
    ("ca", "ecdsa", "sha384"),
]


def sign_opts(scheme: str, digest: str) -> list[str]:
    opts = ["-pkeyopt", f"digest:{digest}"]
    if scheme == "pss":
        opts += ["-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:digest"]
    return opts


@pytest.mark.parametrize("name, scheme, digest", SIGN_CASES,
                         ids=[f"{n}-{s}-{d}" for n, s, d in SIGN_CASES])
def test_pkeyutl_sign_verify(wf, tmp_path, name, scheme, digest):
    """`pkeyutl -sign` over a digest through the engine; verified by plain openssl with the
    exported public key, and by `pkeyutl -verify` through the engine (public key object)."""
    message = tmp_path / "message.txt"
    message.write_bytes(b"pkcs11-kms workflow " + secrets.token_bytes(32))
    md = tmp_path / f"message.{digest}"
    md.write_bytes(wf.plain_ossl("dgst", f"-{digest}", "-binary", message, text=False).stdout)
    sig = tmp_path / "message.sig"
    opts = sign_opts(scheme, digest)
    wf.ossl("pkeyutl", "-sign", "-engine", "pkcs11", "-keyform", "engine",
            "-inkey", uri(wf.label(name)), "-in", md, "-out", sig, *opts)
    if scheme == "ecdsa":  # DER ECDSA-Sig-Value from the r||s the module returns
        asn1 = wf.plain_ossl("asn1parse", "-inform", "DER", "-in", sig).stdout
        assert asn1.count("INTEGER") == 2, asn1
    else:
        assert sig.stat().st_size == 256

    # Independent: plain openssl, the exported public key; a changed digest fails.
    proc = wf.plain_ossl("pkeyutl", "-verify", "-pubin", "-inkey", wf.pub[name], "-in", md,
                         "-sigfile", sig, *opts)
    assert "Signature Verified Successfully" in proc.stdout
    if name == "rsa":  # PKCS#1 v1.5 / PSS proper, not just "some RSA signature"
        other = "pss" if scheme == "pkcs1" else "pkcs1"
        proc = wf.plain_ossl("pkeyutl", "-verify", "-pubin", "-inkey", wf.pub[name], "-in", md,
                             "-sigfile", sig, *sign_opts(other, digest), ok=False)
        assert proc.returncode == 1, proc.stderr
    tampered = tmp_path / "tampered"
    tampered.write_bytes(bytes([md.read_bytes()[0] ^ 1]) + md.read_bytes()[1:])
    proc = wf.plain_ossl("pkeyutl", "-verify", "-pubin", "-inkey", wf.pub[name], "-in", tampered,
                         "-sigfile", sig, *opts, ok=False)
    assert proc.returncode == 1 and "Signature Verification Failure" in proc.stdout

    # Through the engine, the token's public key object.
    proc = wf.ossl("pkeyutl", "-verify", "-engine", "pkcs11", "-keyform", "engine", "-pubin",
                   "-inkey", uri(wf.label(name), "public"), "-in", md, "-sigfile", sig, *opts)
    assert "Signature Verified Successfully" in proc.stdout


@pytest.mark.parametrize("name", ["rsa", "ec"])
def test_pkeyutl_verify_through_engine_rejects_a_bad_signature(wf, tmp_path, name):
    md = tmp_path / "digest"
    md.write_bytes(secrets.token_bytes(32))
    sig = tmp_path / "sig"
    opts = sign_opts("pkcs1" if name == "rsa" else "ecdsa", "sha256")
    wf.ossl("pkeyutl", "-sign", "-engine", "pkcs11", "-keyform", "engine",
            "-inkey", uri(wf.label(name)), "-in", md, "-out", sig, *opts)
    md.write_bytes(secrets.token_bytes(32))
    proc = wf.ossl("pkeyutl", "-verify", "-engine", "pkcs11", "-keyform", "engine", "-pubin",
                   "-inkey", uri(wf.label(name), "public"), "-in", md, "-sigfile", sig, *opts,
                   ok=False)
    assert proc.returncode == 1 and "Signature Verification Failure" in proc.stdout


def test_pkeyutl_pss_with_another_salt_length_fails_cleanly(wf, tmp_path):
    """KMS signs PSS with salt length = digest length only; OpenSSL's default for PSS signing is
    the maximum salt length. The module refuses (CKR_MECHANISM_PARAM_INVALID), openssl fails."""
    md = tmp_path / "digest"
    md.write_bytes(secrets.token_bytes(32))
    proc = wf.ossl("pkeyutl", "-sign", "-engine", "pkcs11", "-keyform", "engine",
                   "-inkey", uri(wf.label("rsa")), "-in", md, "-out", tmp_path / "sig",
                   "-pkeyopt", "digest:sha256", "-pkeyopt", "rsa_padding_mode:pss",
                   "-pkeyopt", "rsa_pss_saltlen:max", ok=False)
    assert proc.returncode != 0
    assert (tmp_path / "sig").stat().st_size == 0


# ---- 3. encrypt with the public key, decrypt through the engine (RSA-OAEP) -----------------------


@pytest.mark.parametrize("md", ["sha256", "sha1"])
def test_pkeyutl_oaep_decrypt(wf, tmp_path, md):
    """Encrypted by plain openssl with the exported public key; decrypted by KMS through the
    engine; plaintext compared byte for byte (the longest plaintext OAEP allows, and 1 byte)."""
    hlen = {"sha256": 32, "sha1": 20}[md]
    opts = ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", f"rsa_oaep_md:{md}"]
    for size in (384 - 2 * hlen - 2, 1):
        plain = tmp_path / f"plain-{size}"
        plain.write_bytes(secrets.token_bytes(size))
        ct = tmp_path / f"ct-{size}"
        wf.plain_ossl("pkeyutl", "-encrypt", "-pubin", "-inkey", wf.pub["dec"], "-in", plain,
                      "-out", ct, *opts)
        out = tmp_path / f"decrypted-{size}"
        wf.ossl("pkeyutl", "-decrypt", "-engine", "pkcs11", "-keyform", "engine",
                "-inkey", uri(wf.label("dec")), "-in", ct, "-out", out, *opts)
        assert out.read_bytes() == plain.read_bytes()


def test_pkeyutl_oaep_encrypt_through_engine(wf, tmp_path):
    """`pkeyutl -encrypt` with the token's public key object (OpenSSL encrypts locally), and the
    result decrypts with KMS."""
    opts = ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256"]
    plain, ct, out = tmp_path / "plain", tmp_path / "ct", tmp_path / "out"
    plain.write_bytes(secrets.token_bytes(100))
    wf.ossl("pkeyutl", "-encrypt", "-engine", "pkcs11", "-keyform", "engine", "-pubin",
            "-inkey", uri(wf.label("dec"), "public"), "-in", plain, "-out", ct, *opts)
    assert ct.stat().st_size == 384
    wf.ossl("pkeyutl", "-decrypt", "-engine", "pkcs11", "-keyform", "engine",
            "-inkey", uri(wf.label("dec")), "-in", ct, "-out", out, *opts)
    assert out.read_bytes() == plain.read_bytes()


def test_pkeyutl_pkcs1_v15_decrypt_fails_cleanly(wf, tmp_path):
    """KMS has no PKCS#1 v1.5 decryption: the module refuses, openssl fails without output."""
    plain, ct, out = tmp_path / "plain", tmp_path / "ct", tmp_path / "out"
    plain.write_bytes(b"v1.5")
    wf.plain_ossl("pkeyutl", "-encrypt", "-pubin", "-inkey", wf.pub["dec"], "-in", plain,
                  "-out", ct)
    proc = wf.ossl("pkeyutl", "-decrypt", *wf.key_form(), "-inkey", uri(wf.label("dec")),
                   "-in", ct, "-out", out, ok=False)
    assert proc.returncode != 0
    assert not out.exists() or out.stat().st_size == 0


# ---- 4. CSR and self-signed certificate ---------------------------------------------------------


@pytest.mark.parametrize("name, opts, sigalg", [
    ("rsa", ["-sha256"], "sha256WithRSAEncryption"),
    ("rsa", ["-sha384", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"],
     "rsassaPss"),
    ("ec", ["-sha256"], "ecdsa-with-SHA256"),
    ("ca", ["-sha384"], "ecdsa-with-SHA384"),
], ids=["rsa", "rsa-pss", "ec", "ec-p384"])
def test_csr(wf, tmp_path, name, opts, sigalg):
    """`req -new` signed by the token key; `req -verify` (plain openssl) accepts it and its
    public key is KMS's."""
    csr = tmp_path / "request.csr"
    wf.ossl("req", "-new", *wf.key_form(), "-key", uri(wf.label(name)),
            "-subj", f"/CN={name}.example.test", *opts, "-out", csr)
    proc = wf.plain_ossl("req", "-verify", "-in", csr, "-noout", "-text")
    assert "verify OK" in proc.stdout + proc.stderr
    assert f"Signature Algorithm: {sigalg}" in proc.stdout
    request = x509.load_pem_x509_csr(csr.read_bytes())
    assert request.is_signature_valid
    assert request.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo,
    ) == wf.keys[name].public_der


@pytest.mark.parametrize("name", ["rsa", "ec", "ca"])
def test_self_signed_certificate(wf, name):
    """The fixture's `req -x509` certificates: self-signature verified, KMS's public key."""
    cert = wf.cert[name]
    proc = wf.plain_ossl("verify", "-CAfile", cert, "-check_ss_sig", cert)
    assert proc.stdout.strip() == f"{cert}: OK"
    assert cert_public_der(cert) == wf.keys[name].public_der


# ---- 5. a CA whose key is on the token -----------------------------------------------------------


@pytest.fixture()
def software_csr(wf, tmp_path) -> Path:
    csr = tmp_path / "leaf.csr"
    wf.plain_ossl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", tmp_path / "leaf.key",
                  "-subj", "/CN=leaf.example.test", "-out", csr)
    return csr


def assert_issued_by_ca(wf, leaf: Path, csr: Path) -> None:
    proc = wf.plain_ossl("verify", "-CAfile", wf.cert["ca"], leaf)
    assert proc.stdout.strip() == f"{leaf}: OK"
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    ca = x509.load_pem_x509_certificate(wf.cert["ca"].read_bytes())
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)  # the CA's (KMS's P-384) public key checks the signature
    request = x509.load_pem_x509_csr(csr.read_bytes())
    assert cert.public_key() == request.public_key()


def test_ca_x509_req(wf, tmp_path, software_csr):
    """`x509 -req -CA ca.pem -CAkey URI` (with the engine: `-CAkeyform engine -engine pkcs11`)
    signs a software key's CSR."""
    leaf = tmp_path / "leaf.pem"
    wf.ossl("x509", "-req", "-in", software_csr, "-CA", wf.cert["ca"], "-CAkey", uri("ca"),
            *wf.key_form("-CAkeyform"), "-days", "7", "-sha384",
            "-set_serial", "0x1001", "-out", leaf)
    assert_issued_by_ca(wf, leaf, software_csr)


@pytest.mark.parametrize("key_in", ["config", "keyfile"])
def test_openssl_ca(wf, tmp_path, software_csr, key_in):
    """`openssl ca` with a minimal CA config; the CA key is the pkcs11: URI, given as the
    config's private_key or with -keyfile."""
    (tmp_path / "newcerts").mkdir()
    (tmp_path / "index.txt").write_text("")
    (tmp_path / "serial").write_text("1000\n")
    config = tmp_path / "ca.cnf"
    config.write_text(
        "[ca]\ndefault_ca = kms_ca\n"
        "[kms_ca]\n"
        f"dir = {tmp_path}\n"
        "database = $dir/index.txt\nserial = $dir/serial\nnew_certs_dir = $dir/newcerts\n"
        f"certificate = {wf.cert['ca']}\n"
        + (f"private_key = {uri('ca')}\n" if key_in == "config" else "")
        + "default_md = sha384\ndefault_days = 7\npolicy = policy_any\n"
        "x509_extensions = leaf_ext\n"
        "[policy_any]\ncommonName = supplied\n"
        "[leaf_ext]\nbasicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
    )
    leaf = tmp_path / "leaf.pem"
    keyfile = ["-keyfile", uri("ca")] if key_in == "keyfile" else []
    wf.ossl("ca", "-batch", "-config", config, *wf.key_form(),
            *keyfile, "-in", software_csr, "-out", leaf, "-notext")
    assert_issued_by_ca(wf, leaf, software_csr)
    assert (tmp_path / "index.txt").read_text().startswith("V\t")
    assert x509.load_pem_x509_certificate(leaf.read_bytes()).serial_number == 0x1000


# ---- 6. HTTPS server with the key on the token ---------------------------------------------------


class SServer:
    """`openssl s_server` on 127.0.0.1 and a free port, output to a file; stopped by stop()."""

    def __init__(self, openssl: str, args: list, env: dict[str, str], log: Path) -> None:
        self.cmd = [openssl, "s_server", *map(str, args)]
        self.env, self.log = env, log
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> SServer:
        for _attempt in range(3):  # another process may take the free port before we bind it
            self.port = free_port()
            with open(self.log, "w") as out:
                self.proc = subprocess.Popen(
                    [*self.cmd, "-accept", f"127.0.0.1:{self.port}"], env=self.env,
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                text = self.log.read_text(errors="replace")
                if "ACCEPT" in text:
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
            self.stop()
            if "Address already in use" not in text:
                raise AssertionError(f"s_server did not start: {self.output()}")
        raise AssertionError(f"s_server did not start: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        rc, self.proc = self.proc.returncode, None
        # terminated by us, never died by another signal (a crash)
        assert rc in (0, -signal.SIGTERM, -signal.SIGKILL), \
            f"s_server ended with {rc}: {self.output()}"


@pytest.fixture(scope="module")
def tls_servers(wf):
    """s_server -www with a token key and its self-signed certificate, one per key, lazily."""
    servers: dict[str, SServer] = {}

    def get(name: str) -> SServer:
        if name not in servers:
            server = SServer(wf.openssl, ["-engine", "pkcs11", "-keyform", "engine",
                                          "-key", uri(wf.label(name)), "-cert", wf.cert[name],
                                          "-www"], wf.env, wf.dir / f"s_server-{name}.log")
            servers[name] = server.start()
        return servers[name]

    try:
        yield get
    finally:
        for server in servers.values():
            server.stop()


HTTPS_CASES = [
    # key, protocol, client -sigalgs, expected signature type, expected hash
    ("rsa", "tls1_2", None, "RSA-PSS", "SHA256"),  # OpenSSL peers prefer PSS in TLS 1.2 too
    ("rsa", "tls1_2", "RSA+SHA256", "RSA", "SHA256"),  # PKCS#1 v1.5 (CKM_RSA_PKCS, DigestInfo)
    ("rsa", "tls1_2", "RSA+SHA512", "RSA", "SHA512"),
    ("rsa", "tls1_3", None, "RSA-PSS", "SHA256"),
    ("rsa", "tls1_3", "rsa_pss_rsae_sha384", "RSA-PSS", "SHA384"),
    ("rsa", "tls1_3", "rsa_pss_rsae_sha512", "RSA-PSS", "SHA512"),
    ("ec", "tls1_2", None, "ECDSA", "SHA256"),
    ("ec", "tls1_2", "ECDSA+SHA384", "ECDSA", "SHA384"),  # a P-256 key with SHA-384
    ("ec", "tls1_3", None, "ECDSA", "SHA256"),
]
GET = "GET / HTTP/1.0\r\n\r\n"


@pytest.mark.parametrize("name, version, sigalgs, sigtype, hash_", HTTPS_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2] or 'default'}" for c in HTTPS_CASES])
def test_https_server_s_client(wf, tls_servers, name, version, sigalgs, sigtype, hash_):
    """A plain `s_client` completes the handshake (it verifies the server's signature, made by
    KMS, and the certificate) and fetches the -www page."""
    server = tls_servers(name)
    cmd = ["s_client", "-connect", f"127.0.0.1:{server.port}", f"-{version}",
           "-CAfile", wf.cert[name], "-verify_return_error", "-verify_ip", "127.0.0.1",
           "-brief", "-ign_eof"]
    if sigalgs:
        cmd += ["-sigalgs", sigalgs]
    proc = wf.plain_ossl(*cmd, input=GET)
    info = proc.stderr
    assert "Verification: OK" in info, info
    assert f"Protocol version: TLSv1.{version[-1]}" in info, info
    # OpenSSL 3.0 names the kind ("RSA-PSS"), 3.5 the TLS scheme ("rsa_pss_rsae_sha256")
    scheme = {"RSA": "rsa_pkcs1_sha", "RSA-PSS": "rsa_pss_rsae_sha",
              "ECDSA": r"ecdsa_secp\d+r1_sha"}
    assert re.search(rf"Signature type: ({sigtype}|{scheme[sigtype]}{hash_[3:]})\n", info), info
    assert f"Hash used: {hash_}\n" in info, info
    assert "HTTP/1.0 200 ok" in proc.stdout and "</HTML>" in proc.stdout, proc.stdout
    assert re.search(rf"Protocol\s*: TLSv1\.{version[-1]}", proc.stdout), proc.stdout


@pytest.mark.parametrize("name", ["rsa", "ec"])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_https_server_curl(wf, tls_servers, https_kms_server, name, version):
    """curl trusts the token key's certificate (--cacert), checks the name, fetches the page;
    the handshake's signature is one KMS request."""
    server = tls_servers(name)
    limits = ["--tlsv1.2", "--tls-max", "1.2"] if version == "1.2" else ["--tlsv1.3"]
    https_kms_server.set_faults()  # no faults; the emulator's counters start from zero
    proc = run([tool("curl"), "-sS", "--max-time", "30", *limits, "--cacert", wf.cert[name],
                f"https://127.0.0.1:{server.port}/"], wf.plain)
    assert https_kms_server.faults()["stats"]["requests"] == 1
    assert re.search(rf"Protocol\s*: TLSv{version}", proc.stdout), proc.stdout
    run([tool("curl"), "-sS", "--max-time", "30", "--cacert", wf.cert[name],
         f"https://localhost:{server.port}/", "-o", os.devnull], wf.plain)


# ---- 7. TLS client certificate authentication ----------------------------------------------------


@pytest.fixture(scope="module")
def client_auth_server(wf):
    """A software-key s_server that requires a client certificate issued to a token key."""
    d = wf.dir / "client-auth"
    d.mkdir()
    wf.plain_ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                  "-keyout", d / "server.key", "-out", d / "server.pem", "-days", "2",
                  "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1")
    trusted = d / "clients.pem"
    trusted.write_text(wf.cert["rsa"].read_text() + wf.cert["ec"].read_text())
    server = SServer(wf.openssl, ["-key", d / "server.key", "-cert", d / "server.pem", "-www",
                                  "-Verify", "1", "-verify_return_error", "-CAfile", trusted],
                     wf.plain, d / "s_server.log")
    server.server_cert = d / "server.pem"  # type: ignore[attr-defined]
    try:
        yield server.start()
    finally:
        server.stop()


def assert_client_accepted(page: str, cert: Path) -> None:
    """s_server -www shows the verified client certificate: it must be ours."""
    assert "Client certificate" in page, page
    shown = pem_blocks(page.replace("\r\n", "\n"), "CERTIFICATE")
    assert shown, page
    assert x509.load_pem_x509_certificate(shown[-1].encode()) == \
        x509.load_pem_x509_certificate(cert.read_bytes())


@pytest.mark.parametrize("name", ["rsa", "ec"])
@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
def test_client_auth_s_client(wf, client_auth_server, name, version):
    server = client_auth_server
    proc = wf.ossl("s_client", "-engine", "pkcs11", "-keyform", "engine", "-key",
                   uri(wf.label(name)), "-cert", wf.cert[name],
                   "-connect", f"127.0.0.1:{server.port}", f"-{version}",
                   "-CAfile", server.server_cert, "-verify_return_error", "-ign_eof", "-quiet",
                   input=GET)
    assert_client_accepted(proc.stdout, wf.cert[name])
    assert re.search(rf"Protocol\s*: TLSv1\.{version[-1]}", proc.stdout), proc.stdout
    # OpenSSL 3.0 prints "CN = x, O = y", 3.5 "CN=x, O=y"
    assert f"depth=0 CN=localhost, O=pkcs11-kms, OU={name}\nverify return:1" in \
        server.output().replace(" = ", "="), server.output()


CURL_CLIENT_CASES = [("rsa", "1.2", "file"), ("rsa", "1.3", "token"),
                     ("ec", "1.2", "token"), ("ec", "1.3", "file")]


@pytest.mark.parametrize("name, version, cert_from", CURL_CLIENT_CASES,
                         ids=["-".join(c) for c in CURL_CLIENT_CASES])
def test_client_auth_curl(wf, client_auth_server, name, version, cert_from):
    """curl --engine pkcs11 --key-type ENG --key URI, with the certificate from a file or from
    the token (--cert-type ENG --cert URI;type=cert: the token's `certificates`)."""
    server = client_auth_server
    limits = ["--tlsv1.2", "--tls-max", "1.2"] if version == "1.2" else ["--tlsv1.3"]
    if cert_from == "token":
        cert = ["--cert-type", "ENG", "--cert", uri(wf.label(name), "cert")]
    else:
        cert = ["--cert", str(wf.cert[name])]
    proc = run([tool("curl"), "-sS", "--max-time", "30", *limits, "--cacert", server.server_cert,
                "--engine", "pkcs11", "--key-type", "ENG", "--key", uri(wf.label(name)), *cert,
                f"https://127.0.0.1:{server.port}/"], wf.env)
    assert_client_accepted(proc.stdout, wf.cert[name])
    assert re.search(rf"Protocol\s*: TLSv{version}", proc.stdout), proc.stdout


def test_client_auth_required(wf, client_auth_server):
    """Control: without a client certificate the server refuses (so acceptance means something)."""
    server = client_auth_server
    proc = wf.plain_ossl("s_client", "-connect", f"127.0.0.1:{server.port}", "-tls1_3",
                         "-CAfile", server.server_cert, "-ign_eof", "-quiet", input=GET, ok=False)
    assert "Client certificate" not in proc.stdout
    assert "certificate required" in proc.stderr, proc.stderr


# ---- 8. S/MIME -----------------------------------------------------------------------------------

MAIL = b"To: someone@example.test\r\nSubject: signed by KMS\r\n\r\nHello from pkcs11-kms.\r\n"


@pytest.mark.parametrize("command, name, opts", [
    ("cms", "rsa", []),
    ("cms", "ec", []),
    ("cms", "rsa", ["-md", "sha384", "-keyopt", "rsa_padding_mode:pss",
                    "-keyopt", "rsa_pss_saltlen:digest"]),
    ("smime", "rsa", []),
    ("smime", "ec", []),
], ids=["cms-rsa", "cms-ec", "cms-rsa-pss", "smime-rsa", "smime-ec"])
def test_smime_sign(wf, tmp_path, command, name, opts):
    """`cms -sign` / `smime -sign` with the token key; `cms -verify -CAfile` (plain openssl)
    returns the content byte for byte and names our certificate as the signer."""
    message = tmp_path / "message.eml"
    message.write_bytes(MAIL)
    signed = tmp_path / "signed.eml"
    wf.ossl(command, "-sign", "-binary", *wf.key_form(),
            "-inkey", uri(wf.label(name)), "-signer", wf.cert[name], *opts,
            "-in", message, "-out", signed)
    content, signer = tmp_path / "content", tmp_path / "signer.pem"
    proc = wf.plain_ossl("cms", "-verify", "-binary", "-CAfile", wf.cert[name], "-in", signed,
                         "-out", content, "-signer", signer)
    assert "Verification successful" in proc.stderr
    assert content.read_bytes() == MAIL
    assert x509.load_pem_x509_certificate(signer.read_bytes()) == \
        x509.load_pem_x509_certificate(wf.cert[name].read_bytes())
    if "rsa_padding_mode:pss" in opts:
        printed = wf.plain_ossl("cms", "-cmsout", "-print", "-in", signed).stdout
        assert "rsassaPss" in printed, printed
    # A changed message no longer verifies.
    forged = tmp_path / "forged.eml"
    forged.write_bytes(signed.read_bytes().replace(b"Hello from", b"Hallo from"))
    proc = wf.plain_ossl("cms", "-verify", "-binary", "-CAfile", wf.cert[name], "-in", forged,
                         "-out", os.devnull, ok=False)
    assert proc.returncode != 0


@pytest.mark.parametrize("md", ["sha256", "sha1"])
def test_cms_decrypt_oaep(wf, tmp_path, md):
    """A message encrypted (plain openssl) to the decryption key's certificate with RSA-OAEP;
    `cms -decrypt -inkey URI -recip cert` (with the engine: `-engine pkcs11 -keyform engine`)
    gives it back byte for byte. (The encryption runs without the engine config: see the
    notes of docs/openssl.md.)"""
    message = tmp_path / "secret.bin"
    message.write_bytes(secrets.token_bytes(3000))
    enc = tmp_path / "secret.p7m"
    wf.plain_ossl("cms", "-encrypt", "-binary", "-aes-256-cbc", "-recip", wf.cert["dec"],
                  "-keyopt", "rsa_padding_mode:oaep", "-keyopt", f"rsa_oaep_md:{md}",
                  "-in", message, "-out", enc)
    printed = wf.plain_ossl("cms", "-cmsout", "-print", "-in", enc).stdout
    assert "rsaesOaep" in printed, printed
    out = tmp_path / "decrypted.bin"
    wf.ossl("cms", "-decrypt", "-binary", *wf.key_form(),
            "-inkey", uri(wf.label("dec")), "-recip", wf.cert["dec"], "-in", enc, "-out", out)
    assert out.read_bytes() == message.read_bytes()


# ---- 10. random bytes from KMS -------------------------------------------------------------------


@pytest.mark.parametrize("host", ["pkcs11-tool", "p11tool"])
def test_generate_random(wf, module_path, host, https_kms_server):
    """`pkcs11-tool --generate-random N` / `p11tool --generate-random N`: N bytes, different
    each run; and they come from KMS (GenerateRandom failing makes the tool fail)."""
    if host == "pkcs11-tool":
        base = [tool("pkcs11-tool"), "--module", module_path, "--token-label", TOKEN]
        args = lambda n: [*base, "--generate-random", str(n)]  # noqa: E731
    else:
        base = [tool("p11tool"), "--provider", module_path]
        args = lambda n: [*base, "--generate-random", str(n), f"pkcs11:token={TOKEN}"]  # noqa: E731
    env = wf.env
    first = run(args(64), env, text=False).stdout
    second = run(args(64), env, text=False).stdout
    assert len(first) == len(second) == 64
    assert first != second
    big = run(args(2500), env, text=False).stdout  # more than KMS's 1024 bytes per request
    assert len(big) == 2500 and len(set(big)) > 200
    # An IAM policy without kms:GenerateRandom: the tool fails (no bytes from anywhere else).
    https_kms_server.set_faults(error_code="AccessDeniedException", operations=["GenerateRandom"])
    try:
        proc = run(args(16), dict(env, PKCS11_KMS_LOG="info"), ok=False, text=False)
    finally:
        https_kms_server.clear_faults()
    assert proc.returncode != 0 and len(proc.stdout) < 16
    log = proc.stderr.decode(errors="replace")
    assert "KMS GenerateRandom failed" in log and "AccessDeniedException" in log, log
