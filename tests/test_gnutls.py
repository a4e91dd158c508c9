"""GnuTLS (gnutls-bin) with KMS-backed tokens: p11tool lists and test-signs, certtool makes
self-signed certificates with token keys, gnutls-serv serves TLS with token keys (and certificates
read from the token) and gnutls-cli authenticates with a token key as a client.

GnuTLS passes CKF_LIBRARY_CANT_CREATE_OS_THREADS to C_Initialize: the module then runs without a
thread of its own, which the gnutls-serv test checks in /proc. Every tool is required: a tool
missing in CI fails its tests instead of skipping them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hosts import free_port, run, tls_server, tool

from keyseed import SeededKey, key_entries, seed_key, write_config

GNUTLS = "gnutls-bin"
SPY = Path("/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so")


@dataclass
class Gnutls:
    module: str
    env: dict[str, str]            # config without certificates
    keys: dict[str, SeededKey]     # "rsa", "ec"
    tmp: Path
    server: object                 # the emulator, for a second config

    def uri(self, name: str, kind: str = "private") -> str:
        return f"pkcs11:token=gnutls;object={name};type={kind}"


def colon_id(key: SeededKey) -> str:
    return ":".join(f"{b:02x}" for b in bytes.fromhex(key.key_id.replace("-", "")))


@pytest.fixture(scope="module")
def gnutls(https_kms_server, tmp_path_factory, module_path) -> Gnutls:
    """Token "gnutls" (KMS over HTTPS) with an RSA-2048 and a P-256 signing key."""
    client = https_kms_server.client()
    keys = {"rsa": seed_key(client, None, "RSA_2048", "SIGN_VERIFY"),
            "ec": seed_key(client, None, "ECC_NIST_P256", "SIGN_VERIFY")}
    tmp = tmp_path_factory.mktemp("gnutls")
    entries = key_entries(keys, by="key_id")
    config = write_config(tmp / "config.toml", https_kms_server,
                          f'[[token]]\nlabel = "gnutls"\nkeys = [{entries}]\n')
    env = {**os.environ, "PKCS11_KMS_CONFIG": config}
    return Gnutls(module_path, env, keys, tmp, https_kms_server)


def p11tool(g: Gnutls, *args: str, env=None, module=None):
    return run([tool("p11tool", GNUTLS), "--provider", module or g.module, *args],
               env or g.env)


# ---- p11tool -------------------------------------------------------------------------------------


def test_p11tool_list_all(gnutls):
    proc = p11tool(gnutls, "--list-all")
    assert proc.returncode == 0, proc.stderr
    objects = re.findall(r"URL: (\S+)\n\s+Type: (.*)\n\s+Label: (.*)\n(?:\s+Flags: .*\n)?"
                         r"\s+ID: (\S+)", proc.stdout)
    found = {(url.rsplit(";type=", 1)[1], kind, label, ident)
             for url, kind, label, ident in objects}
    rsa, ec = gnutls.keys["rsa"], gnutls.keys["ec"]
    assert found == {
        ("private", "Private key (RSA-2048)", "rsa", colon_id(rsa)),
        ("public", "Public key (RSA-2048)", "rsa", colon_id(rsa)),
        ("private", "Private key (EC/ECDSA-SECP256R1)", "ec", colon_id(ec)),
        ("public", "Public key (EC/ECDSA-SECP256R1)", "ec", colon_id(ec)),
    }, proc.stdout
    assert all(";token=gnutls;" in url for url, *_ in objects)


@pytest.mark.parametrize("name, extra, algorithm", [
    ("rsa", [], "RSA-SHA256"),
    ("rsa", ["--hash", "SHA512"], "RSA-SHA512"),
    ("rsa", ["--sign-params", "RSA-PSS", "--hash", "SHA384"], "RSA-PSS-SHA384"),
    ("ec", [], "ECDSA-SHA256"),
    ("ec", ["--hash", "SHA384"], "ECDSA-SHA384"),  # P-256 with SHA-384: the digest is truncated
], ids=["rsa", "rsa-sha512", "rsa-pss-sha384", "ec", "ec-sha384"])
def test_p11tool_test_sign(gnutls, name, extra, algorithm):
    """p11tool signs with the token key and verifies with the public key on its own."""
    proc = p11tool(gnutls, "--test-sign", *extra, gnutls.uri(name))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert f"Signing using {algorithm}... ok" in output
    assert "Verifying against private key parameters... ok" in output
    assert "Verifying against public key in the token... ok" in output


def test_p11tool_sha1_signature_fails_cleanly(gnutls):
    """KMS has no SHA-1 signatures: a clean PKCS#11 error, no crash."""
    proc = p11tool(gnutls, "--test-sign", "--hash", "SHA1", gnutls.uri("rsa"))
    assert proc.returncode == 1
    assert "Cannot sign data: PKCS #11 error in data" in proc.stderr, proc.stderr


def test_p11tool_initializes_without_threads(gnutls):
    """What GnuTLS passes to C_Initialize (OpenSC's pkcs11-spy in front of the module): flags 3,
    CKF_LIBRARY_CANT_CREATE_OS_THREADS|CKF_OS_LOCKING_OK, and the module accepts it."""
    assert SPY.is_file(), f"{SPY} missing: install opensc-pkcs11"
    trace = gnutls.tmp / "spy.log"
    env = dict(gnutls.env, PKCS11SPY=gnutls.module, PKCS11SPY_OUTPUT=str(trace))
    proc = p11tool(gnutls, "--test-sign", gnutls.uri("ec"), env=env, module=str(SPY))
    assert proc.returncode == 0, proc.stderr
    initialize = trace.read_text().split("C_Initialize", 1)[1].split("\n\n", 1)[0]
    assert "CKF_LIBRARY_CANT_CREATE_OS_THREADS" in initialize, initialize
    assert "Returned:  0 CKR_OK" in initialize, initialize


# ---- certtool: self-signed certificates signed in KMS --------------------------------------------


TEMPLATE = """cn = "gnutls {name} test"
organization = "pkcs11-kms"
serial = {serial}
expiration_days = 30
dns_name = "localhost"
ip_address = "127.0.0.1"
tls_www_server
tls_www_client
signing_key
"""


@pytest.fixture(scope="module")
def certtool_certs(gnutls) -> dict[str, tuple[Path, object]]:
    """certtool --generate-self-signed for each token key: {name: (pem path, CompletedProcess)}."""
    made = {}
    for serial, name in enumerate(("rsa", "ec"), start=1):
        template = gnutls.tmp / f"{name}.tmpl"
        template.write_text(TEMPLATE.format(name=name, serial=serial))
        out = gnutls.tmp / f"{name}.pem"
        proc = run([tool("certtool", GNUTLS), "--generate-self-signed", "--provider",
                    gnutls.module, "--load-privkey", gnutls.uri(name), "--template",
                    str(template), "--outfile", str(out)], gnutls.env)
        made[name] = (out, proc)
    return made


@pytest.mark.parametrize("name, algorithm", [("rsa", "sha256WithRSAEncryption"),
                                             ("ec", "ecdsa-with-SHA256")])
def test_certtool_self_signed_with_token_key(gnutls, certtool_certs, name, algorithm):
    out, proc = certtool_certs[name]
    assert proc.returncode == 0, proc.stderr
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    # The certificate's key is the KMS key, and its signature verifies with KMS's public key.
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    assert spki == gnutls.keys[name].public_der
    cert.verify_directly_issued_by(cert)
    common_name = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert common_name == f"gnutls {name} test"
    check = run([tool("openssl"), "x509", "-in", str(out), "-noout", "-text"], gnutls.env)
    assert f"Signature Algorithm: {algorithm}" in check.stdout
    verify = run([tool("openssl"), "verify", "-CAfile", str(out), str(out)], gnutls.env)
    assert verify.stdout.strip() == f"{out}: OK", verify.stdout + verify.stderr


def test_certtool_rsa_pss_certificate(gnutls):
    """certtool --sign-params RSA-PSS: an RSASSA-PSS certificate signed in KMS."""
    template = gnutls.tmp / "pss.tmpl"
    template.write_text(TEMPLATE.format(name="pss", serial=9))
    out = gnutls.tmp / "pss.pem"
    proc = run([tool("certtool", GNUTLS), "--generate-self-signed", "--provider", gnutls.module,
                "--load-privkey", gnutls.uri("rsa"), "--sign-params", "RSA-PSS",
                "--hash", "SHA384", "--template", str(template), "--outfile", str(out)],
               gnutls.env)
    assert proc.returncode == 0, proc.stderr
    check = run([tool("openssl"), "x509", "-in", str(out), "-noout", "-text"], gnutls.env)
    assert "Signature Algorithm: rsassaPss" in check.stdout
    assert "Hash Algorithm: sha384" in check.stdout
    verify = run([tool("openssl"), "verify", "-CAfile", str(out), str(out)], gnutls.env)
    assert verify.stdout.strip() == f"{out}: OK", verify.stdout + verify.stderr


# ---- TLS: gnutls-serv and gnutls-cli with keys and certificates on the token ---------------------


@pytest.fixture(scope="module")
def tls(gnutls, certtool_certs):
    """A second config listing certtool's certificates, so the token holds them too."""
    for _, proc in certtool_certs.values():
        assert proc.returncode == 0, proc.stderr
    entries = key_entries(gnutls.keys, by="key_id")
    config = write_config(gnutls.tmp / "tls.toml", gnutls.server,
                          f'[[token]]\nlabel = "gnutls"\nkeys = [{entries}]\n'
                          'certificates = ["rsa.pem", "ec.pem"]\n')
    env = dict(gnutls.env, PKCS11_KMS_CONFIG=config)
    both = gnutls.tmp / "both.pem"
    both.write_bytes(b"".join(path.read_bytes() for path, _ in certtool_certs.values()))
    return env, both


def test_p11tool_lists_token_certificates(gnutls, tls):
    env, _ = tls
    proc = p11tool(gnutls, "--list-all-certs", env=env)
    assert proc.returncode == 0, proc.stderr
    certs = re.findall(r"URL: (\S+)\n\s+Type: (.*)\n\s+Expires: .*\n\s+Label: (.*)\n\s+ID: (\S+)",
                       proc.stdout)
    assert sorted((kind, label, ident) for _, kind, label, ident in certs) == sorted([
        ("X.509 Certificate (RSA-2048)", "rsa", colon_id(gnutls.keys["rsa"])),
        ("X.509 Certificate (EC/ECDSA-SECP256R1)", "ec", colon_id(gnutls.keys["ec"])),
    ]), proc.stdout


@pytest.fixture(scope="module")
def gnutls_serv(gnutls, tls):
    """gnutls-serv with both token keys and their certificates read from the token, verifying
    client certificates against certtool's two certificates. gnutls-serv has no bind address
    option: tls_server makes it listen on loopback only."""
    env, both = tls
    port = free_port()
    cmd = [tool("gnutls-serv", GNUTLS), "--provider", gnutls.module, "--http", "-p", str(port),
           "--x509keyfile", gnutls.uri("rsa"), "--x509certfile", gnutls.uri("rsa", "cert"),
           "--x509keyfile", gnutls.uri("ec"), "--x509certfile", gnutls.uri("ec", "cert"),
           "--verify-client-cert", "--x509cafile", str(both)]
    with tls_server(cmd, env, port, gnutls.tmp / "gnutls-serv.log") as proc:
        yield port, proc


def gnutls_cli(gnutls, port: int, env, *args: str):
    request = "GET / HTTP/1.0\r\n\r\n"
    return run([tool("gnutls-cli", GNUTLS), "-p", str(port), "127.0.0.1", *args], env,
               input=request, stdin=None, timeout=30)


@pytest.mark.parametrize("priority, description", [
    ("NORMAL:-VERS-ALL:+VERS-TLS1.2:-SIGN-ALL:+SIGN-RSA-SHA256",
     "(TLS1.2-X.509)-(ECDHE-SECP256R1)-(RSA-SHA256)-(AES-256-GCM)"),
    ("NORMAL:-VERS-ALL:+VERS-TLS1.2:-SIGN-ALL:+SIGN-RSA-PSS-RSAE-SHA384",
     "(TLS1.2-X.509)-(ECDHE-SECP256R1)-(RSA-PSS-RSAE-SHA384)-(AES-256-GCM)"),
    ("NORMAL:-VERS-ALL:+VERS-TLS1.3:-SIGN-ALL:+SIGN-RSA-PSS-RSAE-SHA256",
     "(TLS1.3-X.509)-(ECDHE-SECP256R1)-(RSA-PSS-RSAE-SHA256)-(AES-256-GCM)"),
    ("NORMAL:-VERS-ALL:+VERS-TLS1.2:-SIGN-ALL:+SIGN-ECDSA-SHA384",
     "(TLS1.2-X.509)-(ECDHE-SECP256R1)-(ECDSA-SHA384)-(AES-256-GCM)"),
    ("NORMAL:-VERS-ALL:+VERS-TLS1.3:-SIGN-ALL:+SIGN-ECDSA-SECP256R1-SHA256",
     "(TLS1.3-X.509)-(ECDHE-SECP256R1)-(ECDSA-SECP256R1-SHA256)-(AES-256-GCM)"),
], ids=["tls12-rsa-pkcs1", "tls12-rsa-pss", "tls13-rsa-pss", "tls12-ecdsa-sha384", "tls13-ecdsa"])
def test_gnutls_serv_handshake(gnutls, tls, gnutls_serv, priority, description):
    """gnutls-cli (no module) verifies the server's certificate and its KMS signature."""
    env, both = tls
    port, server = gnutls_serv
    proc = gnutls_cli(gnutls, port, env, "--x509cafile", str(both), "--priority", priority)
    assert server.poll() is None, "gnutls-serv died"
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "- Status: The certificate is trusted." in output
    assert f"- Description: {description}" in output
    assert "- Handshake was completed" in output
    assert "HTTP/1.0 200 OK" in proc.stdout


def test_gnutls_cli_authenticates_with_token_key(gnutls, tls, gnutls_serv):
    """gnutls-cli presents the token's EC certificate and signs with its key; gnutls-serv verifies
    it and shows the client certificate on its page."""
    env, both = tls
    port, _ = gnutls_serv
    proc = gnutls_cli(gnutls, port, env, "--provider", gnutls.module, "--x509cafile", str(both),
                      "--x509keyfile", gnutls.uri("ec"),
                      "--x509certfile", gnutls.uri("ec", "cert"))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "- Handshake was completed" in output
    page = proc.stdout.split("HTTP/1.0 200 OK", 1)[1]
    assert "X.509 Certificate Information:" in page, page
    assert re.search(r"^\s*Subject: .*CN=gnutls ec test", page, re.M), page


def test_gnutls_serv_runs_without_module_thread(gnutls, tls, gnutls_serv):
    """After a handshake signed in KMS, gnutls-serv still has its one thread: the module honoured
    CKF_LIBRARY_CANT_CREATE_OS_THREADS."""
    env, both = tls
    port, server = gnutls_serv
    proc = gnutls_cli(gnutls, port, env, "--x509cafile", str(both))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert server.poll() is None
    assert os.listdir(f"/proc/{server.pid}/task") == [str(server.pid)]


def test_gnutls_serv_log_is_clean(gnutls, gnutls_serv):
    log = (gnutls.tmp / "gnutls-serv.log").read_text()
    assert "Traceback" not in log, log
    assert "pkcs11-kms[" not in log, log
