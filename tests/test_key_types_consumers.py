"""Issue #13: the new key types through real consumers - Ed25519 through pkcs11-provider (OpenSSL 3)
and GnuTLS, ECDH through pkcs11-provider and libp11's engine (`openssl pkeyutl -derive`,
`openssl cms -decrypt`), HMAC through OpenSC's pkcs11-tool. tests/test_key_types.py covers the same
keys through python-pkcs11 and a raw cffi client.

Every result is checked without the module: signatures and certificates by `cryptography` with
KMS's public key, shared secrets against the ECDH `cryptography` computes from the peer's private
key and KMS's public key (and its X9.63 KDF), MACs by Python's `hmac` over the key material the
emulator reveals to tests, CMS plaintext byte for byte. The module runs inside OpenSSL hosts, so the
emulator is served over HTTPS ("Inside OpenSSL" in docs/design.md). Every tool is required: a
missing one fails its tests, never skips them.

What the installed versions do (Debian 12: OpenSSL 3.0, pkcs11-provider 1.0, libp11 0.4.12,
GnuTLS 3.7.9, OpenSC 0.23; Debian 13: OpenSSL 3.5, pkcs11-provider 1.0, libp11 0.4.13,
GnuTLS 3.8.9, OpenSC 0.26; the Debian 13 facts were checked by running its binaries from a
trixie tree), and so what the tests use:

- `openssl pkey -in URI;type=public` needs `-pubin` (3.0 and 3.5 alike, as for a public key in a
  PEM file: without it pkey looks for a private key); with `type=private` the provider exports the
  public parts of the private key object.
- Ed25519 signing through OpenSSL: `openssl pkeyutl -sign -rawin`. OpenSSL 3.0's `openssl dgst
  -sign` does not do Ed25519 at all, not even with a software key ("Key type not supported for
  this operation"); 3.5 does. KMS signs at most 4096 bytes pure: a longer file fails cleanly.
  `-pkeyopt instance:Ed25519ph` reaches the module as CK_EDDSA_PARAMS with phFlag on 3.0 and
  3.5; KMS cannot sign RFC 8032 Ed25519ph, so the module refuses it and openssl fails cleanly.
- Ed25519 through GnuTLS: `p11tool --test-sign` needs `--hash SHA512` (with its default SHA256,
  3.7.9 and 3.8.9 alike stop at "No supported signature algorithm for EdDSA (Ed25519) and
  SHA256"); with it, both sign over CKM_EDDSA and verify. certtool makes a self-signed Ed25519
  certificate, which `cryptography` checks.
- ECDH: pkcs11-provider asks the token for the KDF (CKD_NULL for a plain derive, CKD_SHA*_KDF with
  the X9.63 parameters, and for `cms -decrypt` CKD_SHA*_KDF with the CMS SharedInfo and the
  key-wrap key's length); libp11's engine only ever asks for CKD_NULL and runs the KDF in OpenSSL.
- libp11 0.4.12 (Debian 12) cannot use any key of a token that also holds an Ed25519 (or ML-DSA)
  private key: its private-key enumeration fails as a whole at the first key type it does not know
  ("Unable to enumerate private keys", then "object not found"), whatever the object order - the
  Ed25519 key came after the EC key in the trace. 0.4.13 (Debian 13) skips unknown types (see
  Yubico/yubico-piv-tool#510). The engine tests therefore use a token `agree` with the ECDH keys
  only, as a Debian 12 user must; test_engine_with_ed25519_on_the_token pins both behaviours.
- HMAC: pkcs11-tool finds the secret key by `--id` and class and signs one-shot below 1025 bytes,
  multi-part from there (both tested). OpenSC 0.23 asks every key for CKA_ALWAYS_AUTHENTICATE,
  which is not a secret-key attribute (CKR_ATTRIBUTE_TYPE_INVALID: a warning it prints and
  ignores). A wrong MAC is "Invalid signature" on stdout with exit 0 in 0.23, on stderr with
  exit 1 in 0.26 (Debian 13).
  pkcs11-provider 1.0 has no HMAC.

Not here:

- ML-DSA has no OpenSSL consumer: pkcs11-provider 1.0 (Debian 12 and 13) has no ML-DSA (1.2 is
  the first), so ML-DSA is covered by python-pkcs11 in tests/test_key_types.py.
- OpenSSH 9.2 (Debian 12) and 10.0 (Debian 13) skip Ed25519 keys on a PKCS#11 token ("skipping
  unsupported key type"; Ed25519 over PKCS#11 starts with 10.1), and there is no ECDH for ssh to
  use: no ssh test.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from hosts import tool
from keyseed import SeededKey, key_entries, seed_key, write_config
from test_openssl_provider import PROVIDER, no_prompt, provider_conf_text
from test_openssl_workflows import ENGINE, engine_conf_text, run


GNUTLS = "gnutls-bin"
CURVES = {256: ec.SECP256R1(), 384: ec.SECP384R1(), 521: ec.SECP521R1()}
HMAC_BITS = (224, 256, 384, 512)
CMS_RECIPIENT = "ecdh256"  # the ECDH key with a certificate on the tokens


@dataclass
class Consumers:
    dir: Path
    module: str
    keys: dict[str, SeededKey]
    provider: dict[str, str]   # openssl with pkcs11-provider, token `kinds`
    engine: dict[str, str]     # openssl with libp11's engine, token `agree`
    tools: dict[str, str]      # p11tool, certtool, pkcs11-tool: token `kinds`
    plain: dict[str, str]      # no provider, no engine, no module: the independent side
    server: object
    cert: dict[str, Path] = field(default_factory=dict)

    def public(self, name: str):
        return serialization.load_der_public_key(self.keys[name].public_der)

    def openssl(self, *args, env: dict[str, str], **kw):
        return run([tool("openssl"), *args], env, **kw)

    def provider_ossl(self, *args, **kw):
        return no_prompt(self.openssl(*args, env=self.provider, **kw))


def uri(label: str, kind: str = "private", token: str = "kinds") -> str:
    return f"pkcs11:token={token};object={label};type={kind}"


def spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def recipient_certificate(public_key, directory: Path) -> tuple[Path, Path]:
    """A local CA (software key) and the certificate it issues for `public_key` (a KMS key
    agreement key): keyUsage keyAgreement, the kind `openssl cms -encrypt -recip` takes."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pkcs11-kms key types test CA")])
    ca = (x509.CertificateBuilder()
          .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kms ecdh")]))
            .issuer_name(ca_name).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.KeyUsage(False, False, False, False, True, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path = directory / "ca.pem", directory / f"{CMS_RECIPIENT}.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca_path, cert_path


@pytest.fixture(scope="module")
def kt(https_kms_server, module_path, tmp_path_factory) -> Consumers:
    """New KMS keys on the HTTPS emulator: Ed25519, ECDH P-256/384/521 and HMAC 224-512. Token
    `kinds` holds them all (and the ECDH P-256 key's certificate); token `agree`, for libp11's
    engine, the ECDH keys and the certificate only (see the module docstring)."""
    assert PROVIDER.is_file(), f"{PROVIDER} missing: install pkcs11-provider (bookworm-backports)"
    assert ENGINE.is_file(), f"{ENGINE} missing: install libengine-pkcs11-openssl"
    tool("openssl")
    d = tmp_path_factory.mktemp("key-types-consumers")
    client = https_kms_server.client()
    keys = {"ed25519": seed_key(client, None, "ECC_NIST_EDWARDS25519", "SIGN_VERIFY")}
    for bits in CURVES:
        keys[f"ecdh{bits}"] = seed_key(client, None, f"ECC_NIST_P{bits}", "KEY_AGREEMENT")
    for bits in HMAC_BITS:
        keys[f"hmac{bits}"] = seed_key(client, None, f"HMAC_{bits}", "GENERATE_VERIFY_MAC")

    ca, cert = recipient_certificate(
        serialization.load_der_public_key(keys[CMS_RECIPIENT].public_der), d)
    certificates = f'certificates = ["{cert}"]\n'
    kinds = write_config(d / "kinds.toml", https_kms_server,
                         f'[[token]]\nlabel = "kinds"\nkeys = [{key_entries(keys)}]\n'
                         + certificates)
    ecdh = {n: k for n, k in keys.items() if n.startswith("ecdh")}
    agree = write_config(d / "agree.toml", https_kms_server,
                         f'[[token]]\nlabel = "agree"\nkeys = [{key_entries(ecdh)}]\n'
                         + certificates)

    (d / "provider.cnf").write_text(provider_conf_text(module_path))
    (d / "engine.cnf").write_text(engine_conf_text(module_path))
    plain = {k: v for k, v in os.environ.items() if k not in (
        "OPENSSL_CONF", "PKCS11_KMS_CONFIG", "OPENSSL_ENGINES", "PKCS11_PROVIDER_MODULE")}
    return Consumers(
        d, module_path, keys,
        provider=dict(plain, OPENSSL_CONF=str(d / "provider.cnf"), PKCS11_KMS_CONFIG=kinds),
        engine=dict(plain, OPENSSL_CONF=str(d / "engine.cnf"), PKCS11_KMS_CONFIG=agree),
        tools=dict(plain, PKCS11_KMS_CONFIG=kinds),
        plain=plain, server=https_kms_server, cert={"ca": ca, CMS_RECIPIENT: cert})


# ---- Ed25519 through pkcs11-provider -------------------------------------------------------------


@pytest.mark.parametrize("kind, pubin", [("public", ["-pubin"]), ("private", [])])
def test_ed25519_public_key_through_provider(kt, kind, pubin):
    """`openssl pkey -in URI -pubout` (the public key object, or the public parts the private key
    object carries): KMS's Ed25519 public key."""
    out = kt.dir / f"ed25519-{kind}.pub.pem"
    kt.provider_ossl("pkey", *pubin, "-in", uri("ed25519", kind), "-pubout", "-out", out)
    exported = serialization.load_pem_public_key(out.read_bytes())
    assert isinstance(exported, ed25519.Ed25519PublicKey)
    assert spki(exported) == kt.keys["ed25519"].public_der


def test_ed25519_self_signed_certificate_through_provider(kt):
    """`openssl req -x509 -key URI`: an Ed25519 certificate signed by KMS, whose signature
    `cryptography` verifies with KMS's public key (and plain openssl too)."""
    out = kt.dir / "ed25519-self-signed.pem"
    kt.provider_ossl("req", "-new", "-x509", "-key", uri("ed25519"), "-subj", "/CN=ed",
                     "-days", "30", "-out", out)
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ED25519
    assert spki(cert.public_key()) == kt.keys["ed25519"].public_der
    assert cert.subject.rfc4514_string() == "CN=ed"
    kt.public("ed25519").verify(cert.signature, cert.tbs_certificate_bytes)
    verify = kt.openssl("verify", "-CAfile", out, out, env=kt.plain)
    assert verify.stdout.strip() == f"{out}: OK"


@pytest.mark.parametrize("length", [1, 1000, 4096])
def test_ed25519_signs_a_file_through_provider(kt, length):
    """`openssl pkeyutl -sign -rawin`: pure Ed25519 over the file (CKM_EDDSA, no parameter; KMS
    ED25519_SHA_512 over the message), verified by `cryptography`."""
    message, signature = kt.dir / f"ed-{length}.bin", kt.dir / f"ed-{length}.sig"
    message.write_bytes(secrets.token_bytes(length))
    kt.provider_ossl("pkeyutl", "-sign", "-rawin", "-inkey", uri("ed25519"), "-in", message,
                     "-out", signature)
    assert len(signature.read_bytes()) == 64
    kt.public("ed25519").verify(signature.read_bytes(), message.read_bytes())


def test_ed25519_message_over_kms_limit_fails_cleanly(kt):
    """KMS signs at most 4096 bytes of message (CKR_DATA_LEN_RANGE beyond): openssl reports an
    error and exits, no crash, no signature."""
    message, signature = kt.dir / "ed-4097.bin", kt.dir / "ed-4097.sig"
    message.write_bytes(secrets.token_bytes(4097))
    proc = kt.provider_ossl("pkeyutl", "-sign", "-rawin", "-inkey", uri("ed25519"), "-in",
                            message, "-out", signature, ok=False)
    assert proc.returncode != 0, proc.stderr
    assert not signature.exists() or signature.read_bytes() == b""


def test_ed25519ph_through_provider_fails_cleanly(kt):
    """`openssl pkeyutl -sign -rawin -pkeyopt instance:Ed25519ph` (pkcs11-provider: CKM_EDDSA with
    CK_EDDSA_PARAMS phFlag): KMS's ED25519_PH_SHA_512 hashes the digest it gets once more, so it
    cannot make RFC 8032's Ed25519ph of the file; the module refuses the parameter
    (CKR_MECHANISM_PARAM_INVALID) and openssl writes no signature."""
    message, signature = kt.dir / "ed-ph.bin", kt.dir / "ed-ph.sig"
    message.write_bytes(secrets.token_bytes(1000))
    proc = kt.provider_ossl("pkeyutl", "-sign", "-rawin", "-inkey", uri("ed25519"), "-pkeyopt",
                            "instance:Ed25519ph", "-in", message, "-out", signature, ok=False)
    assert proc.returncode != 0, proc.stderr
    assert not signature.exists() or signature.read_bytes() == b""


def test_ed25519_openssl_dgst_needs_pkeyutl_on_openssl_3_0(kt):
    """Why the tests sign with pkeyutl: OpenSSL 3.0's dgst refuses Ed25519 for a software key as
    well, so this is OpenSSL's limit, not the token's. Later OpenSSL (Debian 13: 3.5) signs with
    dgst too; the signature must then verify."""
    version = kt.openssl("version", env=kt.plain).stdout
    message = kt.dir / "dgst.bin"
    message.write_bytes(b"signed with openssl dgst")
    software = kt.dir / "software-ed25519.pem"
    software.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    soft = kt.openssl("dgst", "-sign", software, "-out", kt.dir / "soft.sig", message,
                      env=kt.plain, ok=False)
    token_sig = kt.dir / "dgst.sig"
    token = kt.provider_ossl("dgst", "-sign", uri("ed25519"), "-out", token_sig, message,
                             ok=False)
    if version.startswith("OpenSSL 3.0."):
        assert soft.returncode != 0 and token.returncode != 0
        assert "Key type not supported for this operation" in soft.stderr, soft.stderr
    else:
        assert soft.returncode == 0, soft.stderr
        assert token.returncode == 0, token.stderr
        kt.public("ed25519").verify(token_sig.read_bytes(), message.read_bytes())


# ---- Ed25519 through GnuTLS ----------------------------------------------------------------------


def gnutls_tool(kt: Consumers, name: str, *args: str):
    return run([tool(name, GNUTLS), *args], kt.tools, ok=False)


def test_ed25519_p11tool_lists_the_key(kt):
    proc = gnutls_tool(kt, "p11tool", "--provider", kt.module, "--list-all", "pkcs11:token=kinds")
    assert proc.returncode == 0, proc.stderr
    objects = dict(re.findall(r"Type: (.*)\n\s+Label: (.*)\n", proc.stdout))
    assert objects.get("Private key (EdDSA (Ed25519))") == "ed25519", proc.stdout
    assert objects.get("Public key (EdDSA (Ed25519))") == "ed25519", proc.stdout


def test_ed25519_p11tool_test_sign(kt):
    """`p11tool --test-sign --hash SHA512`: GnuTLS signs over CKM_EDDSA and verifies the signature
    itself (nettle) with the key's parameters and with the token's public key object."""
    proc = gnutls_tool(kt, "p11tool", "--provider", kt.module, "--test-sign", "--hash", "SHA512",
                       uri("ed25519"))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Signing using EdDSA-Ed25519... ok" in output
    assert "Verifying against private key parameters... ok" in output
    assert "Verifying against public key in the token... ok" in output
    exported = gnutls_tool(kt, "p11tool", "--provider", kt.module, "--export-pubkey",
                           uri("ed25519", "public"))
    assert exported.returncode == 0, exported.stderr
    assert spki(serialization.load_pem_public_key(exported.stdout.encode())) == \
        kt.keys["ed25519"].public_der


def test_ed25519_certtool_self_signed(kt):
    """`certtool --generate-self-signed` with the token key: a certificate GnuTLS signed through
    the module, checked by `cryptography` with KMS's public key."""
    template = kt.dir / "ed25519.tmpl"
    template.write_text('cn = "gnutls ed25519"\nserial = 7\nexpiration_days = 30\nsigning_key\n')
    out = kt.dir / "ed25519-certtool.pem"
    proc = gnutls_tool(kt, "certtool", "--generate-self-signed", "--provider", kt.module,
                       "--load-privkey", uri("ed25519"), "--template", str(template),
                       "--outfile", str(out))
    assert proc.returncode == 0, proc.stderr
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ED25519
    assert spki(cert.public_key()) == kt.keys["ed25519"].public_der
    kt.public("ed25519").verify(cert.signature, cert.tbs_certificate_bytes)


# ---- ECDH: openssl pkeyutl -derive ---------------------------------------------------------------


def peer(kt: Consumers, bits: int, tag: str) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    """A software peer key on the KMS key's curve, its public key in a PEM file."""
    key = ec.generate_private_key(CURVES[bits])
    path = kt.dir / f"peer-{tag}-{bits}.pem"
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, path


def expected_secret(kt: Consumers, key: ec.EllipticCurvePrivateKey, bits: int) -> bytes:
    """The ECDH shared secret (the x coordinate, field length) from the peer's side."""
    secret = key.exchange(ec.ECDH(), kt.public(f"ecdh{bits}"))
    assert len(secret) == (bits + 7) // 8
    return secret


@pytest.mark.parametrize("bits", sorted(CURVES))
def test_ecdh_derive_through_provider(kt, bits):
    """`openssl pkeyutl -derive -inkey URI -peerkey peer.pem` with pkcs11-provider
    (C_DeriveKey CKM_ECDH1_DERIVE, CKD_NULL; KMS DeriveSharedSecret): the ECDH secret."""
    key, peer_pem = peer(kt, bits, "provider")
    out = kt.dir / f"secret-provider-{bits}"
    kt.provider_ossl("pkeyutl", "-derive", "-inkey", uri(f"ecdh{bits}"), "-peerkey", peer_pem,
                     "-out", out)
    assert out.read_bytes() == expected_secret(kt, key, bits)


@pytest.mark.parametrize("bits", sorted(CURVES))
def test_ecdh_derive_through_engine(kt, bits):
    """The same through libp11's engine (`-engine pkcs11 -keyform engine`; a derive template
    without CKA_SENSITIVE/CKA_EXTRACTABLE, CKA_VALUE read after a size query), token `agree`."""
    key, peer_pem = peer(kt, bits, "engine")
    out = kt.dir / f"secret-engine-{bits}"
    kt.openssl("pkeyutl", "-derive", "-engine", "pkcs11", "-keyform", "engine",
               "-inkey", uri(f"ecdh{bits}", token="agree"), "-peerkey", peer_pem, "-out", out,
               env=kt.engine)
    assert out.read_bytes() == expected_secret(kt, key, bits)


def libp11_version() -> tuple[int, ...]:
    proc = run(["dpkg-query", "-W", "-f", "${Version}", "libengine-pkcs11-openssl"], os.environ)
    return tuple(int(n) for n in re.match(r"(\d+)\.(\d+)\.(\d+)", proc.stdout).groups())


def test_engine_with_ed25519_on_the_token(kt):
    """libp11's engine on token `kinds`, which also holds the Ed25519 key: 0.4.13 and later skip
    the key type they do not know and derive; 0.4.12 (Debian 12) fails to enumerate the token's
    private keys at all ("Unable to enumerate private keys"), a libp11 bug the module cannot
    answer for - whatever the object order, the Ed25519 key is listed after the EC keys."""
    key, peer_pem = peer(kt, 256, "engine-kinds")
    out = kt.dir / "secret-engine-kinds"
    proc = kt.openssl("pkeyutl", "-derive", "-engine", "pkcs11", "-keyform", "engine",
                      "-inkey", uri("ecdh256"), "-peerkey", peer_pem, "-out", out,
                      env=dict(kt.engine, PKCS11_KMS_CONFIG=kt.tools["PKCS11_KMS_CONFIG"]),
                      ok=False)
    if libp11_version() >= (0, 4, 13):
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == expected_secret(kt, key, 256)
    else:
        assert proc.returncode != 0
        assert "Unable to enumerate private keys" in proc.stderr, proc.stderr


@pytest.mark.parametrize("digest", ["SHA1", "SHA256", "SHA512"])
def test_ecdh_x963_kdf_through_provider(kt, digest):
    """`-pkeyopt kdf-type:X963KDF`: pkcs11-provider hands the KDF to the token (CKD_SHA*_KDF with
    the ukm as shared data); the module's output equals `cryptography`'s X963KDF over the
    secret. (pkcs11-provider sizes the key by the field, so the output is 32 bytes on P-256.)"""
    key, peer_pem = peer(kt, 256, f"kdf-{digest}")
    ukm = secrets.token_bytes(16)
    out = kt.dir / f"kdf-{digest}"
    kt.provider_ossl("pkeyutl", "-derive", "-inkey", uri("ecdh256"), "-peerkey", peer_pem,
                     "-pkeyopt", "kdf-type:X963KDF", "-pkeyopt", f"kdf-digest:{digest}",
                     "-pkeyopt", "kdf-outlen:32", "-pkeyopt", f"hexkdf-ukm:{ukm.hex()}",
                     "-out", out)
    algorithm = {"SHA1": hashes.SHA1(), "SHA256": hashes.SHA256(), "SHA512": hashes.SHA512()}
    expected = X963KDF(algorithm[digest], 32, ukm).derive(expected_secret(kt, key, 256))
    assert out.read_bytes() == expected


# ---- ECDH: CMS decryption to a key agreement certificate -----------------------------------------


@pytest.mark.parametrize("route, kdf_md, cipher", [
    ("provider", "sha256", "-aes128"),   # CKD_SHA256_KDF, a 16-byte key-wrap key
    ("provider", None, "-aes256"),       # OpenSSL's default KDF digest: CKD_SHA1_KDF, 32 bytes
    ("provider", "sha512", "-aes192"),   # CKD_SHA512_KDF, 24 bytes
    ("engine", "sha256", "-aes128"),     # CKD_NULL; OpenSSL runs the KDF
], ids=["provider-sha256", "provider-sha1", "provider-sha512", "engine-sha256"])
def test_cms_decrypt_key_agreement(kt, route, kdf_md, cipher):
    """A message encrypted in software (`openssl cms -encrypt -recip cert.pem`: ECDH with an
    ephemeral key, X9.63 KDF, AES key wrap) to the KMS key's certificate, which the tokens also
    hold; `openssl cms -decrypt -inkey URI -recip cert.pem` gives it back byte for byte."""
    cert = kt.cert[CMS_RECIPIENT]
    kt.openssl("verify", "-CAfile", kt.cert["ca"], cert, env=kt.plain)
    message = kt.dir / f"cms-{route}-{kdf_md}.txt"
    message.write_bytes(secrets.token_bytes(3000))
    encrypted = kt.dir / f"cms-{route}-{kdf_md}.p7m"
    keyopt = ["-keyopt", f"ecdh_kdf_md:{kdf_md}"] if kdf_md else []
    kt.openssl("cms", "-encrypt", "-binary", cipher, "-recip", cert, *keyopt, "-in", message,
               "-out", encrypted, env=kt.plain)
    printed = kt.openssl("cms", "-cmsout", "-print", "-in", encrypted, env=kt.plain).stdout
    scheme = {None: "sha1kdf", "sha256": "sha256kdf", "sha512": "sha512kdf"}[kdf_md]
    assert re.search(rf"dhSinglePass-stdDH-{scheme}-scheme", printed), printed
    out = kt.dir / f"cms-{route}-{kdf_md}.out"
    if route == "provider":
        kt.provider_ossl("cms", "-decrypt", "-binary", "-inkey", uri(CMS_RECIPIENT),
                         "-recip", cert, "-in", encrypted, "-out", out)
    else:
        kt.openssl("cms", "-decrypt", "-binary", "-engine", "pkcs11", "-keyform", "engine",
                   "-inkey", uri(CMS_RECIPIENT, token="agree"), "-recip", cert,
                   "-in", encrypted, "-out", out, env=kt.engine)
    assert out.read_bytes() == message.read_bytes()


def test_recipient_certificate_pairs_with_the_key(kt):
    """The certificate from the token's `certificates` gets the KMS key's CKA_ID and label
    ("Objects" in docs/design.md): pkcs11-tool lists it next to the key."""
    proc = run([tool("pkcs11-tool"), "--module", kt.module, "--token-label", "kinds",
                "--list-objects", "--type", "cert"], kt.tools)
    ckid = kt.keys[CMS_RECIPIENT].key_id.replace("-", "")
    assert re.search(rf"Certificate Object; type = X\.509 cert\n\s+label:\s+{CMS_RECIPIENT}\n"
                     rf"(?:.*\n)*?\s+ID:\s+{ckid}", proc.stdout), proc.stdout


# ---- HMAC through pkcs11-tool --------------------------------------------------------------------


@pytest.mark.parametrize("length", [14, 4000], ids=["one-shot", "multi-part"])
@pytest.mark.parametrize("bits", HMAC_BITS)
def test_hmac_pkcs11_tool_sign_and_verify(kt, bits, length):
    """`pkcs11-tool --sign --mechanism SHA<n>-HMAC --id ID` (C_Sign below 1025 bytes, C_SignUpdate
    from there; KMS GenerateMac): Python's hmac over the key material the emulator reveals gives
    the same MAC. `--verify` accepts it (KMS VerifyMac) and refuses a changed one."""
    key = kt.keys[f"hmac{bits}"]
    ckid = key.key_id.replace("-", "")
    message, mac = kt.dir / f"hmac-{bits}-{length}.bin", kt.dir / f"hmac-{bits}-{length}.mac"
    message.write_bytes(secrets.token_bytes(length))
    base = [tool("pkcs11-tool"), "--module", kt.module, "--token-label", "kinds",
            "--mechanism", f"SHA{bits}-HMAC", "--id", ckid, "-i", str(message)]
    run([*base, "--sign", "-o", str(mac)], kt.tools)
    material = kt.server.key_material(key.key_id).material
    digest = getattr(hashlib, f"sha{bits}")
    assert mac.read_bytes() == hmac.new(material, message.read_bytes(), digest).digest()

    proc = run([*base, "--verify", "--signature-file", str(mac)], kt.tools)
    assert proc.stdout.strip() == "Signature is valid", proc.stdout + proc.stderr
    changed = kt.dir / f"hmac-{bits}-{length}.bad"
    changed.write_bytes(bytes([mac.read_bytes()[0] ^ 1]) + mac.read_bytes()[1:])
    proc = run([*base, "--verify", "--signature-file", str(changed)], kt.tools, ok=False)
    # OpenSC 0.23 prints it on stdout and exits 0; 0.26 (Debian 13) on stderr, exit 1.
    assert "Invalid signature" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "Signature is valid" not in proc.stdout
