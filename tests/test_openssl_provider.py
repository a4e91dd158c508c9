"""Issue #9: pkcs11-provider (OpenSSL 3's PKCS#11 provider; Debian 12 bookworm-backports, 1.0) as
a first-class route: every workflow of tests/test_openssl_workflows.py (libp11's engine) through
`pkcs11:` URIs, plus what only the provider can do - key files holding a URI (`openssl ts -reply`,
nginx, curl) and OpenSSL's random numbers from the token (`random = PKCS11-RAND`).

Every command reads an OPENSSL_CONF made from conf/openssl-provider.cnf as users copy it (only the
module path replaced): `early` load behaviour, the default provider active, a token PIN so that the
provider never prompts. stdin is /dev/null, and no output may show the provider's PIN prompt. The
emulator is served over HTTPS, so the module's own TLS runs inside the openssl process that loaded
it. Results are checked without the provider: signatures and certificates by plain openssl (no
provider config) against KMS's public keys, plaintext byte for byte, TLS by verifying peers.

The engine module's fixtures and tests whose bodies only check results (s_client and curl against
the server, the CA's certificates, client-auth control) run here unchanged against this module's
`wf` and `tls_servers`. Every tool is required: a missing one fails its tests, never skips them.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from hosts import free_port, tls_server, tool
from keyseed import REGION, SeededKey, key_entries, seed_key, write_config
from test_nginx import nginx_conf, render
from test_nginx import (  # noqa: F401 - these tests run again, against nginx with the provider
    test_module_threads_in_master_block_signals,
    test_serves_https_from_forked_workers,
)
from test_openssl_workflows import (
    GET,
    KEYS,
    SAN,
    SIGN_CASES,
    TOKEN,
    SServer,
    Workflows,
    assert_client_accepted,
    cert_public_der,
    id_uri,
    pem_blocks,
    run,
    sign_opts,
    uri,
)
from test_openssl_workflows import (  # noqa: F401 - fixtures and tests reused with this `wf`
    client_auth_server,
    software_csr,
    test_ca_x509_req,
    test_client_auth_required,
    test_cms_decrypt_oaep,
    test_csr,
    test_https_server_curl,
    test_https_server_s_client,
    test_openssl_ca,
    test_pkeyutl_pkcs1_v15_decrypt_fails_cleanly,
    test_self_signed_certificate,
    test_smime_sign,
)

PROVIDER = Path("/usr/lib/x86_64-linux-gnu/ossl-modules/pkcs11.so")
PROVIDER_CONF = Path(__file__).resolve().parents[1] / "conf" / "openssl-provider.cnf"
MODULE_LINE = ("pkcs11-module-path = /opt/pkcs11-kms/lib/python3.11/site-packages/pkcs11_kms/"
               "libkms-pkcs11.so")
PIN_PROMPT = "Enter PIN"  # pkcs11-provider: "Enter PIN for PKCS#11 Token (Slot 0 - ...):"
URI_PEM = "PKCS#11 PROVIDER URI"


# ---- helpers -------------------------------------------------------------------------------------


def provider_conf_text(module_path: str, *, load: str | None = None, init_args: str | None = None,
                       rand: bool = False, pin: bool = True) -> str:
    """conf/openssl-provider.cnf with its placeholder module path replaced (the file we ship);
    optionally another load behaviour, the commented-out init args and random section enabled, or
    the PIN line taken out. Each line replaced must be in the file exactly once."""
    text = PROVIDER_CONF.read_text()
    assert f"\nmodule = {PROVIDER}\n" in text, "conf/openssl-provider.cnf: module ="
    changes = {MODULE_LINE: f"pkcs11-module-path = {module_path}"}
    if load:
        changes["\npkcs11-module-load-behavior = early\n"] = \
            f"\npkcs11-module-load-behavior = {load}\n"
    if init_args:
        changes["\n# pkcs11-module-init-args = /etc/pkcs11-kms/config.toml\n"] = \
            f"\npkcs11-module-init-args = {init_args}\n"
    if rand:
        changes["\n# random = random_sect\n"] = "\nrandom = random_sect\n"
    if not pin:
        changes["\npkcs11-module-token-pin = kms\n"] = "\n"
    return render(text, changes)


def no_prompt(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """The provider never asked for a PIN. (It would print its prompt and read the terminal, or
    stdin - /dev/null - when there is none: a prompt on a terminal is a timeout.)"""
    for stream in (proc.stdout, proc.stderr):
        text = stream if isinstance(stream, str) else stream.decode(errors="replace")
        assert PIN_PROMPT not in text, text
    return proc


class ProviderWorkflows(Workflows):
    """Workflows whose `ossl` runs openssl with the provider config and checks that no PIN
    prompt appeared."""

    def ossl(self, *args, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
        return no_prompt(super().ossl(*args, env=env, **kw))

    def key_form(self, option: str = "-keyform") -> list[str]:
        return []  # the provider takes pkcs11: URIs wherever openssl takes a key

    def public_der(self, pem: Path) -> bytes:
        """The public key in a PEM file (SubjectPublicKeyInfo or PKCS#1), as plain openssl reads
        it: DER SubjectPublicKeyInfo."""
        return self.plain_ossl("pkey", "-pubin", "-in", pem, "-outform", "DER", text=False).stdout


def token_config(path: Path, server, keys: dict[str, SeededKey], certs: list[Path]) -> str:
    """Token `web`: the KMS keys by ARN, each labelled as in KEYS, and the certificates."""
    labelled = {KEYS[name][0]: key for name, key in keys.items()}
    body = f'[[token]]\nlabel = "{TOKEN}"\nkeys = [{key_entries(labelled)}]\n'
    if certs:
        body += "certificates = [" + ", ".join(f'"{c}"' for c in certs) + "]\n"
    return write_config(path, server, body)


# ---- the token: keys, provider config, certificates made through the provider --------------------


@pytest.fixture(scope="module")
def wf(https_kms_server, module_path, tmp_path_factory) -> ProviderWorkflows:
    """The engine module's four keys (new KMS keys, no aliases) on token `web`; their public keys
    exported through the provider; a self-signed certificate for each signing key and the CA,
    made through the provider (req -x509); the decryption key's certificate issued by that CA;
    then the token's config with those certificates, the one every test uses."""
    assert PROVIDER.is_file(), f"{PROVIDER} missing: install pkcs11-provider (bookworm-backports)"
    openssl = tool("openssl")
    d = tmp_path_factory.mktemp("openssl-provider")
    client = https_kms_server.client()
    keys = {n: seed_key(client, None, spec, usage) for n, (_, spec, usage) in KEYS.items()}

    conf = d / "openssl-provider.cnf"
    conf.write_text(provider_conf_text(module_path))
    plain = {k: v for k, v in os.environ.items() if k not in (
        "OPENSSL_CONF", "PKCS11_KMS_CONFIG", "OPENSSL_ENGINES", "PKCS11_PROVIDER_MODULE")}
    bare = token_config(d / "bare.toml", https_kms_server, keys, [])
    w = ProviderWorkflows(d, keys, dict(plain, OPENSSL_CONF=str(conf), PKCS11_KMS_CONFIG=bare),
                          plain, openssl)

    for name, key in keys.items():  # workflow 1 as set-up: every public key, equal to KMS's
        w.pub[name] = d / f"{name}.pub.pem"
        w.ossl("pkey", "-pubin", "-in", uri(w.label(name), "public"), "-out", w.pub[name])
        assert w.public_der(w.pub[name]) == key.public_der, f"{name}: not KMS's public key"

    for name, subject, extra in [
        ("rsa", "/CN=localhost/O=pkcs11-kms/OU=rsa", ["-addext", SAN]),
        ("ec", "/CN=localhost/O=pkcs11-kms/OU=ec", ["-addext", SAN]),
        ("ca", "/CN=pkcs11-kms provider test CA",
         ["-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
    ]:
        w.cert[name] = d / f"{name}.pem"
        w.ossl("req", "-new", "-x509", "-key", uri(w.label(name)), "-subj", subject,
               "-days", "30", *extra, "-out", w.cert[name])
        assert cert_public_der(w.cert[name]) == keys[name].public_der

    w.cert["dec"] = issue(w, d, "dec", "/CN=pkcs11-kms decryption key",
                          "keyUsage = critical,keyEncipherment\n"
                          "extendedKeyUsage = emailProtection\n")

    full = token_config(d / "config.toml", https_kms_server, keys, list(w.cert.values()))
    w.env = dict(w.env, PKCS11_KMS_CONFIG=full)
    return w


def issue(w: ProviderWorkflows, d: Path, name: str, subject: str, extensions: str) -> Path:
    """A certificate (in `d`) for the token key `name` issued by the token CA (x509 -req
    -force_pubkey over a throwaway request, -CAkey pkcs11: URI); checked by plain openssl."""
    csr = d / f"{name}-subject.csr"
    w.plain_ossl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", d / f"{name}-throwaway.key", "-subj", subject, "-out", csr)
    ext = d / f"{name}-ext.cnf"
    ext.write_text(extensions)
    cert = d / f"{name}-issued.pem"
    w.ossl("x509", "-req", "-in", csr, "-force_pubkey", w.pub[name], "-CA", w.cert["ca"],
           "-CAkey", uri(w.label("ca")), "-set_serial", f"0x{secrets.token_hex(8)}",
           "-days", "30", "-extfile", ext, "-out", cert)
    w.plain_ossl("verify", "-CAfile", w.cert["ca"], cert)
    assert cert_public_der(cert) == w.keys[name].public_der
    return cert


# ---- the configuration ---------------------------------------------------------------------------


def test_shipped_config(wf):
    """What docs/openssl.md promises of the file: `early`, the default provider active, a PIN."""
    text = PROVIDER_CONF.read_text()
    for line in ("pkcs11-module-load-behavior = early", "pkcs11-module-token-pin = kms",
                 "pkcs11-module-encode-provider-uri-to-pem = true", MODULE_LINE):
        assert f"\n{line}\n" in text, line
    proc = wf.ossl("list", "-providers")
    assert re.search(r"  default\n.*\n.*\n    status: active", proc.stdout), proc.stdout
    assert re.search(r"  pkcs11\n    name: PKCS#11 Provider\n.*\n    status: active",
                     proc.stdout), proc.stdout


@pytest.mark.parametrize("load", ["early", "late"])
def test_load_behaviour(wf, tmp_path, module_path, load):
    """`pkcs11-module-load-behavior` early (the module starts while OpenSSL loads its
    configuration) and late (at the first pkcs11: key): key export and a signature work both
    ways."""
    conf = tmp_path / "openssl.cnf"
    conf.write_text(provider_conf_text(module_path, load=load))
    env = dict(wf.env, OPENSSL_CONF=str(conf))
    pub = tmp_path / "rsa.pub.pem"
    wf.ossl("pkey", "-pubin", "-in", uri(wf.label("rsa"), "public"), "-out", pub, env=env)
    assert wf.public_der(pub) == wf.keys["rsa"].public_der
    message, sig = tmp_path / "message", tmp_path / "message.sig"
    message.write_bytes(secrets.token_bytes(100))
    wf.ossl("dgst", "-sha256", "-sign", uri(wf.label("rsa")), "-out", sig, message, env=env)
    proc = wf.plain_ossl("dgst", "-sha256", "-verify", pub, "-signature", sig, message)
    assert proc.stdout.strip() == "Verified OK"


def test_config_init_args(wf, tmp_path, module_path):
    """The token config named in the provider section (pkcs11-module-init-args -> C_Initialize's
    pReserved) instead of $PKCS11_KMS_CONFIG."""
    conf = tmp_path / "openssl-init-args.cnf"
    conf.write_text(provider_conf_text(module_path, init_args=wf.env["PKCS11_KMS_CONFIG"]))
    proc = wf.ossl("pkey", "-pubin", "-in", uri(wf.label("ec"), "public"), "-outform", "DER",
                   env=dict(wf.plain, OPENSSL_CONF=str(conf)), text=False)
    assert proc.stdout == wf.keys["ec"].public_der


def test_without_a_pin_the_provider_prompts(wf, tmp_path, module_path):
    """Control for every no_prompt(): without `pkcs11-module-token-pin` pkcs11-provider asks for
    the PIN before signing (here on stderr: no terminal in a new session, stdin /dev/null)."""
    conf = tmp_path / "openssl-no-pin.cnf"
    conf.write_text(provider_conf_text(module_path, pin=False))
    message = tmp_path / "message"
    message.write_bytes(b"no pin")
    proc = subprocess.run(
        [wf.openssl, "dgst", "-sha256", "-sign", uri(wf.label("ec")), "-out", tmp_path / "sig",
         message], env=dict(wf.env, OPENSSL_CONF=str(conf)), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60, start_new_session=True)
    assert PIN_PROMPT in proc.stderr, proc.stderr


# ---- 1. export the public key --------------------------------------------------------------------


@pytest.mark.parametrize("name, how, kind", [
    ("rsa", "object", "public"),
    ("ec", "id", "public"),
    ("ca", "object", "private"),
    ("dec", "id", "private"),
    ("rsa", "id", "private"),
])
def test_export_public_key(wf, name, how, kind):
    """`openssl pkey [-pubin] -in URI -pubout`: KMS's public key, by label or by CKA_ID, from the
    public or the private key object. (pkcs11-provider 1.0 writes an RSA private key object's
    public half as PKCS#1 "RSA PUBLIC KEY"; plain openssl reads both forms.)"""
    key = wf.keys[name]
    target = uri(wf.label(name), kind) if how == "object" else id_uri(key, kind)
    pubin = ["-pubin"] if kind == "public" else []
    proc = wf.ossl("pkey", *pubin, "-in", target, "-pubout")
    blocks = pem_blocks(proc.stdout, "PUBLIC KEY") + pem_blocks(proc.stdout, "RSA PUBLIC KEY")
    assert len(blocks) == 1, proc.stdout
    pub = wf.dir / f"export-{name}-{how}-{kind}.pem"
    pub.write_text(blocks[0])
    assert wf.public_der(pub) == key.public_der
    der = wf.ossl("pkey", *pubin, "-in", target, "-pubout", "-outform", "DER", text=False).stdout
    assert der == key.public_der


# ---- 2. signatures: dgst -sign and pkeyutl -sign -------------------------------------------------


@pytest.mark.parametrize("name, scheme, digest", SIGN_CASES,
                         ids=[f"{n}-{s}-{d}" for n, s, d in SIGN_CASES])
def test_pkeyutl_sign_verify(wf, tmp_path, name, scheme, digest):
    """`pkeyutl -sign -inkey URI` over a digest; verified by plain openssl with the exported
    public key (and not under the other RSA padding, nor for another digest), and by
    `pkeyutl -verify` through the provider with the token's public key object."""
    message = tmp_path / "message.txt"
    message.write_bytes(b"pkcs11-kms provider " + secrets.token_bytes(32))
    md = tmp_path / f"message.{digest}"
    md.write_bytes(wf.plain_ossl("dgst", f"-{digest}", "-binary", message, text=False).stdout)
    sig = tmp_path / "message.sig"
    opts = sign_opts(scheme, digest)
    wf.ossl("pkeyutl", "-sign", "-inkey", uri(wf.label(name)), "-in", md, "-out", sig, *opts)

    proc = wf.plain_ossl("pkeyutl", "-verify", "-pubin", "-inkey", wf.pub[name], "-in", md,
                         "-sigfile", sig, *opts)
    assert "Signature Verified Successfully" in proc.stdout
    if name == "rsa":
        other = "pss" if scheme == "pkcs1" else "pkcs1"
        proc = wf.plain_ossl("pkeyutl", "-verify", "-pubin", "-inkey", wf.pub[name], "-in", md,
                             "-sigfile", sig, *sign_opts(other, digest), ok=False)
        assert proc.returncode == 1, proc.stderr
    tampered = tmp_path / "tampered"
    tampered.write_bytes(bytes([md.read_bytes()[0] ^ 1]) + md.read_bytes()[1:])
    proc = wf.plain_ossl("pkeyutl", "-verify", "-pubin", "-inkey", wf.pub[name], "-in", tampered,
                         "-sigfile", sig, *opts, ok=False)
    assert proc.returncode == 1 and "Signature Verification Failure" in proc.stdout

    proc = wf.ossl("pkeyutl", "-verify", "-pubin", "-inkey", uri(wf.label(name), "public"),
                   "-in", md, "-sigfile", sig, *opts)
    assert "Signature Verified Successfully" in proc.stdout


@pytest.mark.parametrize("name, scheme, digest", SIGN_CASES,
                         ids=[f"{n}-{s}-{d}" for n, s, d in SIGN_CASES])
def test_dgst_sign(wf, tmp_path, name, scheme, digest):
    """`dgst -sha* -sign URI` (the provider hashes, the token signs); `dgst -verify` by plain
    openssl with the exported public key; a changed message fails."""
    message = tmp_path / "message.txt"
    message.write_bytes(b"pkcs11-kms dgst " + secrets.token_bytes(64))
    sig = tmp_path / "message.sig"
    opts = [o.replace("-pkeyopt", "-sigopt") for o in sign_opts(scheme, digest)[2:]]
    wf.ossl("dgst", f"-{digest}", "-sign", uri(wf.label(name)), *opts, "-out", sig, message)
    proc = wf.plain_ossl("dgst", f"-{digest}", "-verify", wf.pub[name], *opts,
                         "-signature", sig, message)
    assert proc.stdout.strip() == "Verified OK"
    message.write_bytes(message.read_bytes() + b".")
    proc = wf.plain_ossl("dgst", f"-{digest}", "-verify", wf.pub[name], *opts,
                         "-signature", sig, message, ok=False)
    assert proc.returncode == 1 and "Verification failure" in proc.stdout


def test_pss_with_another_salt_length_fails_cleanly(wf, tmp_path):
    """KMS signs PSS with salt length = digest length only: `rsa_pss_saltlen:max` is refused."""
    md = tmp_path / "digest"
    md.write_bytes(secrets.token_bytes(32))
    proc = wf.ossl("pkeyutl", "-sign", "-inkey", uri(wf.label("rsa")), "-in", md,
                   "-out", tmp_path / "sig", "-pkeyopt", "digest:sha256",
                   "-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:max", ok=False)
    assert proc.returncode != 0
    assert (tmp_path / "sig").stat().st_size == 0


# ---- 3. encrypt with the public key, decrypt through the provider (RSA-OAEP) ---------------------

OAEP_CASES = {
    "sha1": [],  # OpenSSL's OAEP default: SHA-1, MGF1-SHA-1
    "sha1-named": ["-pkeyopt", "rsa_oaep_md:sha1"],
    "sha256-mgf1-named": ["-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256"],
    # pkcs11-provider 1.0 passes CK_RSA_PKCS_OAEP_PARAMS {CKM_SHA256, mgf 0} when the MGF1 digest
    # is not named (OpenSSL's meaning: MGF1 with the OAEP digest).
    "sha256": ["-pkeyopt", "rsa_oaep_md:sha256"],
}


@pytest.mark.parametrize("case", list(OAEP_CASES))
def test_pkeyutl_oaep_decrypt(wf, tmp_path, case):
    """Encrypted by plain openssl with the exported public key; decrypted by KMS through the
    provider; plaintext compared byte for byte (the longest plaintext OAEP allows, and 1 byte)."""
    opts = ["-pkeyopt", "rsa_padding_mode:oaep", *OAEP_CASES[case]]
    hlen = 32 if case.startswith("sha256") else 20
    for size in (384 - 2 * hlen - 2, 1):
        plain = tmp_path / f"plain-{size}"
        plain.write_bytes(secrets.token_bytes(size))
        ct = tmp_path / f"ct-{size}"
        wf.plain_ossl("pkeyutl", "-encrypt", "-pubin", "-inkey", wf.pub["dec"], "-in", plain,
                      "-out", ct, *opts)
        out = tmp_path / f"decrypted-{size}"
        wf.ossl("pkeyutl", "-decrypt", "-inkey", uri(wf.label("dec")), "-in", ct, "-out", out,
                *opts)
        assert out.read_bytes() == plain.read_bytes()


def test_pkeyutl_oaep_encrypt_through_provider(wf, tmp_path):
    """`pkeyutl -encrypt` with the token's public key object; the result decrypts with KMS."""
    opts = ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256",
            "-pkeyopt", "rsa_mgf1_md:sha256"]
    plain, ct, out = tmp_path / "plain", tmp_path / "ct", tmp_path / "out"
    plain.write_bytes(secrets.token_bytes(100))
    wf.ossl("pkeyutl", "-encrypt", "-pubin", "-inkey", uri(wf.label("dec"), "public"),
            "-in", plain, "-out", ct, *opts)
    assert ct.stat().st_size == 384
    wf.ossl("pkeyutl", "-decrypt", "-inkey", uri(wf.label("dec")), "-in", ct, "-out", out, *opts)
    assert out.read_bytes() == plain.read_bytes()


# ---- 4-5. CSR, self-signed certificate, a CA (test_csr, test_self_signed_certificate,
# test_ca_x509_req, test_openssl_ca of test_openssl_workflows, with this `wf`) --------------------


# ---- 6. HTTPS server with the key on the token (test_https_server_s_client / _curl) --------------


@pytest.fixture(scope="module")
def tls_servers(wf):
    """s_server -www with a token key (`-key pkcs11:...`) and its self-signed certificate, one per
    key, started lazily; none may have asked for a PIN."""
    servers: dict[str, SServer] = {}

    def get(name: str) -> SServer:
        if name not in servers:
            servers[name] = SServer(wf.openssl, ["-key", uri(wf.label(name)), "-cert",
                                                 wf.cert[name], "-www"],
                                    wf.env, wf.dir / f"s_server-{name}.log").start()
        return servers[name]

    try:
        yield get
    finally:
        for server in servers.values():
            server.stop()
            assert PIN_PROMPT not in server.output(), server.output()


# ---- 7. TLS client certificate authentication (client_auth_server, test_client_auth_required) ---


@pytest.mark.parametrize("name, version, cert_from", [
    ("rsa", "tls1_2", "file"), ("rsa", "tls1_3", "token"),
    ("ec", "tls1_2", "token"), ("ec", "tls1_3", "file"),
])
def test_client_auth_s_client(wf, client_auth_server, name, version, cert_from):
    """`s_client -key URI` with the certificate from a file or from the token (`-cert
    pkcs11:...;type=cert`, the token's `certificates`); the server verified our certificate."""
    server = client_auth_server
    cert = wf.cert[name] if cert_from == "file" else uri(wf.label(name), "cert")
    proc = wf.ossl("s_client", "-key", uri(wf.label(name)), "-cert", cert,
                   "-connect", f"127.0.0.1:{server.port}", f"-{version}",
                   "-CAfile", server.server_cert, "-verify_return_error", "-ign_eof", "-quiet",
                   input=GET)
    assert_client_accepted(proc.stdout, wf.cert[name])
    assert re.search(rf"Protocol\s*: TLSv1\.{version[-1]}", proc.stdout), proc.stdout


@pytest.fixture(scope="module")
def uri_keys(wf) -> dict[str, Path]:
    """For each key, a PEM file holding only its pkcs11: URI, written by the provider's encoder
    (`pkcs11-module-encode-provider-uri-to-pem = true`): `openssl pkey -in URI -out file`."""
    files = {}
    for name in KEYS:
        files[name] = wf.dir / f"{name}.uri.pem"
        wf.ossl("pkey", "-in", uri(wf.label(name)), "-out", files[name])
    return files


@pytest.mark.parametrize("name", ["rsa", "ec"])
def test_uri_pem_file(wf, uri_keys, name):
    """The file holds the key's URI and nothing else; plain openssl cannot use it; through the
    provider it is the token key (`pkey -pubout` gives KMS's public key)."""
    text = uri_keys[name].read_text()
    assert len(pem_blocks(text, URI_PEM)) == 1 and text.count("-----BEGIN") == 1, text
    asn1 = wf.plain_ossl("asn1parse", "-in", uri_keys[name]).stdout
    assert "PKCS#11 Provider URI v1.0" in asn1, asn1
    held = re.search(r"UTF8STRING\s*:(pkcs11:\S+)", asn1)
    assert held and f"token={TOKEN};" in held[1] and f"object={wf.label(name)};" in held[1]
    assert held[1].endswith("type=private"), held[1]
    proc = wf.plain_ossl("pkey", "-in", uri_keys[name], "-noout", ok=False)
    assert proc.returncode != 0
    der = wf.ossl("pkey", "-in", uri_keys[name], "-pubout", "-outform", "DER", text=False).stdout
    assert der == wf.keys[name].public_der


@pytest.mark.parametrize("name, version", [("rsa", "1.3"), ("ec", "1.2")])
def test_client_auth_curl_with_uri_key_file(wf, client_auth_server, uri_keys, name, version):
    """curl (OpenSSL 3, reads OPENSSL_CONF) with `--key` the URI PEM file: the token key signs
    the client's CertificateVerify."""
    server = client_auth_server
    limits = ["--tlsv1.2", "--tls-max", "1.2"] if version == "1.2" else ["--tlsv1.3"]
    proc = no_prompt(run([tool("curl"), "-sS", "--max-time", "30", *limits, "--cacert",
                          server.server_cert, "--key", uri_keys[name], "--cert", wf.cert[name],
                          f"https://127.0.0.1:{server.port}/"], wf.env))
    assert_client_accepted(proc.stdout, wf.cert[name])
    assert re.search(rf"Protocol\s*: TLSv{version}", proc.stdout), proc.stdout


# ---- 8. CMS / S/MIME (test_smime_sign, test_cms_decrypt_oaep of test_openssl_workflows) --------


def test_cms_encrypt_with_the_provider_loaded(wf, tmp_path):
    """Unlike libp11's engine (docs/openssl.md: `cms -encrypt` with -keyopt fails with the engine
    config loaded), the provider config leaves software encryption alone."""
    message, enc, out = tmp_path / "secret.txt", tmp_path / "secret.p7m", tmp_path / "out"
    message.write_bytes(b"to the KMS key\n")
    wf.ossl("cms", "-encrypt", "-binary", "-aes-256-cbc", "-recip", wf.cert["dec"],
            "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256",
            "-in", message, "-out", enc)
    wf.ossl("cms", "-decrypt", "-binary", "-inkey", uri(wf.label("dec")), "-recip",
            wf.cert["dec"], "-in", enc, "-out", out)
    assert out.read_bytes() == message.read_bytes()


# ---- 9. RFC 3161 time-stamps: openssl ts -reply with a URI PEM key file --------------------------

TSA_CONF = """[tsa]
default_tsa = kms_tsa
[kms_tsa]
serial = {dir}/tsaserial
signer_digest = {digest}
default_policy = 1.3.6.1.4.1.99999.7
digests = sha256, sha384, sha512
accuracy = secs:1
ess_cert_id_alg = sha256
"""


@pytest.mark.parametrize("name, digest", [("rsa", "sha256"), ("ec", "sha384")])
def test_ts_reply(wf, tmp_path, uri_keys, name, digest):
    """`openssl ts -reply -inkey key.pem` (OpenSSL reads the TSA key only from a file: the URI PEM
    file) with a TSA certificate the token CA issued; `ts -verify` by plain openssl."""
    tsa_cert = issue(wf, tmp_path, name, f"/CN=pkcs11-kms TSA {name}",
                     "keyUsage = critical,digitalSignature\n"
                     "extendedKeyUsage = critical,timeStamping\n")
    config = tmp_path / "tsa.cnf"
    config.write_text(TSA_CONF.format(dir=tmp_path, digest=digest))
    (tmp_path / "tsaserial").write_text("01\n")
    data, tsq, tsr = tmp_path / "data.txt", tmp_path / "request.tsq", tmp_path / "reply.tsr"
    data.write_text("a document worth a time-stamp\n")
    wf.plain_ossl("ts", "-query", "-data", data, "-sha256", "-cert", "-out", tsq)
    proc = wf.ossl("ts", "-reply", "-config", config, "-queryfile", tsq, "-signer", tsa_cert,
                   "-inkey", uri_keys[name], "-out", tsr)
    assert "Response has been generated." in proc.stderr, proc.stderr
    proc = wf.plain_ossl("ts", "-verify", "-in", tsr, "-queryfile", tsq, "-CAfile",
                         wf.cert["ca"], "-untrusted", tsa_cert)
    assert "Verification: OK" in proc.stdout
    text = wf.plain_ossl("ts", "-reply", "-in", tsr, "-text").stdout
    assert "Status: Granted." in text and "Policy OID: 1.3.6.1.4.1.99999.7" in text
    other = tmp_path / "other.tsq"
    wf.plain_ossl("ts", "-query", "-digest", "00" * 32, "-sha256", "-out", other)
    proc = wf.plain_ossl("ts", "-verify", "-in", tsr, "-queryfile", other, "-CAfile",
                         wf.cert["ca"], "-untrusted", tsa_cert, ok=False)
    assert proc.returncode != 0


# ---- 10. random bytes from KMS: random = PKCS11-RAND ---------------------------------------------


@pytest.fixture(scope="module")
def rand_env(wf, module_path) -> dict[str, str]:
    conf = wf.dir / "openssl-random.cnf"
    conf.write_text(provider_conf_text(module_path, rand=True))
    return dict(wf.env, OPENSSL_CONF=str(conf))


def test_openssl_rand_from_kms(wf, rand_env, https_kms_server):
    """With the [random] section enabled, `openssl rand` is served by C_GenerateRandom: the bytes
    differ each run, and when KMS refuses GenerateRandom (the emulator counts the refusals) there
    are no bytes from anywhere else. With the shipped config (no [random] section) OpenSSL's own
    generator answers, even when KMS refuses GenerateRandom."""
    first = wf.ossl("rand", "64", env=rand_env, text=False).stdout
    second = wf.ossl("rand", "64", env=rand_env, text=False).stdout
    assert len(first) == len(second) == 64 and first != second
    big = wf.ossl("rand", "3000", env=rand_env, text=False).stdout
    assert len(big) == 3000 and len(set(big)) > 200

    refuse = {"error_code": "AccessDeniedException", "operations": ["GenerateRandom"]}
    https_kms_server.set_faults(**refuse)  # also counters from zero
    try:
        refused = wf.ossl("rand", "16", env=rand_env, ok=False, text=False)
        refused_stats = https_kms_server.faults()["stats"]
        https_kms_server.set_faults(**refuse)
        shipped = wf.ossl("rand", "16", text=False)
        shipped_stats = https_kms_server.faults()["stats"]
    finally:
        https_kms_server.clear_faults()
    assert refused.returncode != 0 and len(refused.stdout) < 16, refused.stderr
    assert refused_stats["errors"] >= 1, refused_stats  # GenerateRandom was asked, and refused
    assert len(shipped.stdout) == 16  # while every GenerateRandom failed: not from KMS
    # Only pkcs11-provider's probe when it loads the module (8 bytes, p11prov_check_random(),
    # which decides whether it offers PKCS11-RAND) asked KMS.
    assert shipped_stats["errors"] <= 1, shipped_stats


def test_tls_with_kms_random(wf, rand_env, tmp_path):
    """A TLS server and client both drawing OpenSSL's randomness from KMS, the server's key on
    the token: the handshake works (the module's own HTTPS to KMS inside that process must not
    ask the token for randomness in turn)."""
    server = SServer(wf.openssl, ["-key", uri(wf.label("ec")), "-cert", wf.cert["ec"], "-www"],
                     rand_env, tmp_path / "s_server.log").start()
    try:
        proc = wf.ossl("s_client", "-connect", f"127.0.0.1:{server.port}", "-tls1_3",
                       "-CAfile", wf.cert["ec"], "-verify_return_error", "-brief", "-ign_eof",
                       input=GET, env=rand_env)
    finally:
        server.stop()
    assert "Verification: OK" in proc.stderr, proc.stderr
    assert "HTTP/1.0 200 ok" in proc.stdout, proc.stdout
    assert PIN_PROMPT not in server.output()


# ---- 11. nginx (master + workers) with a URI PEM key file ----------------------------------------

NGINX_TOKEN = "nginx"  # conf/nginx-kms.conf as test_nginx renders it names this token


@pytest.fixture(scope="module")
def nginx_site(wf, https_kms_server, module_path):
    """A world-readable folder (nginx's workers run as nobody) with the module's config (token
    `nginx`: the rsa and ec keys, labelled so), the KMS CA bundle, the certificates, the URI PEM
    key files and OPENSSL_CONF for nginx (the shipped provider config)."""
    folder = Path(tempfile.mkdtemp(prefix="pkcs11-kms-nginx-provider-"))
    try:
        folder.chmod(0o755)
        shutil.copy(https_kms_server.ca_bundle, folder / "kms-ca.pem")
        keys = {name: wf.keys[name] for name in ("rsa", "ec")}
        config = folder / "config.toml"
        config.write_text(
            f'region = "{REGION}"\nendpoint_url = "{https_kms_server.endpoint_url}"\n'
            f'ca_bundle = "{folder}/kms-ca.pem"\n[[token]]\nlabel = "{NGINX_TOKEN}"\n'
            f"keys = [{key_entries(keys)}]\n")
        openssl_conf = folder / "openssl.cnf"
        openssl_conf.write_text(provider_conf_text(module_path))
        env = dict(wf.plain, PKCS11_KMS_CONFIG=str(config), OPENSSL_CONF=str(openssl_conf))
        for name in keys:
            shutil.copy(wf.cert[name], folder / f"{name}.pem")
            wf.ossl("pkey", "-in", f"pkcs11:token={NGINX_TOKEN};object={name};type=private",
                    "-out", folder / f"{name}.key", env=env)
        for path in folder.iterdir():
            path.chmod(0o644)
        yield folder, env
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module", params=["rsa", "ec"])
def nginx(request, nginx_site):
    """nginx (master + 4 workers as nobody) serving HTTPS with `ssl_certificate_key` a URI PEM
    file: the master loads it through the provider, the forked workers sign. Yields what
    test_nginx's fixture yields: (label, port, certificate, prefix, master pid)."""
    assert os.geteuid() == 0, "nginx needs root to start workers as nobody; CI runs this as root"
    folder, env = nginx_site
    label = request.param
    port = free_port()
    prefix = folder / f"nginx-{label}"
    conf = folder / f"nginx-{label}.conf"
    conf.write_text(render(nginx_conf(folder, prefix.name, label, port), {
        f'ssl_certificate_key "engine:pkcs11:pkcs11:token={NGINX_TOKEN};object={label};'
        'type=private";': f"ssl_certificate_key {folder}/{label}.key;",
    }))
    cmd = [tool("nginx"), "-p", str(prefix), "-c", str(conf),
           "-e", str(prefix / "logs" / "stderr.log")]
    with tls_server(cmd, env, port, prefix / "logs" / "console.log") as master:
        try:
            yield label, port, folder / f"{label}.pem", prefix, master.pid
        finally:
            os.killpg(master.pid, signal.SIGKILL)  # master and workers (their own group)


def test_nginx_never_asks_for_a_pin(nginx):
    _label, _port, _certificate, prefix, _master = nginx
    for log in ("stderr.log", "console.log", "error.log"):
        text = (prefix / "logs" / log).read_text()
        assert PIN_PROMPT not in text and "Traceback" not in text, text
