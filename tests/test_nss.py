"""NSS (libnss3-tools) with KMS-backed tokens: modutil registers the module in a fresh database,
certutil lists the token's certificates and keys and makes certificate requests signed in KMS,
selfserv serves TLS with token keys and tstclnt authenticates with a token key as a client.

Every signature is checked by an independent verifier (OpenSSL or `cryptography`). Every tool is
required: a tool missing in CI fails its tests instead of skipping them. Shared helpers live in
hosts.py.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hosts import ckid, free_port, kms_self_signed, nss_calls, pem, run, tls_server, tool
from keyseed import SeededKey, key_entries, seed_key, write_config


# ---- fixtures ------------------------------------------------------------------------------------


@dataclass
class NssSetup:
    db: str                       # "sql:<dir>"
    env: dict[str, str]
    keys: dict[str, SeededKey]    # "rsa", "ec"
    certs: dict[str, x509.Certificate]
    cert_files: dict[str, Path]
    tmp: Path
    procs: list[subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def nss(https_kms_server, tmp_path_factory, module_path) -> NssSetup:
    """Token "nss" (KMS over HTTPS) with an RSA-2048 and a P-256 key and their self-signed
    certificates, registered with modutil in a fresh NSS database."""
    certutil, modutil = tool("certutil"), tool("modutil")
    client = https_kms_server.client()
    keys = {"rsa": seed_key(client, None, "RSA_2048", "SIGN_VERIFY"),
            "ec": seed_key(client, None, "ECC_NIST_P256", "SIGN_VERIFY")}
    tmp = tmp_path_factory.mktemp("nss")
    certs, cert_files = {}, {}
    for name, key in keys.items():
        certs[name] = kms_self_signed(client, key, f"nss {name} test")
        cert_files[name] = tmp / f"{name}.pem"
        cert_files[name].write_bytes(pem(certs[name]))
    entries = key_entries(keys, by="key_id")
    config = write_config(tmp / "config.toml", https_kms_server,
                          f'[[token]]\nlabel = "nss"\nkeys = [{entries}]\n'
                          'certificates = ["rsa.pem", "ec.pem"]\n')
    env = {**os.environ, "PKCS11_KMS_CONFIG": config}
    (tmp / "db").mkdir()
    db = f"sql:{tmp / 'db'}"
    procs = [
        run([certutil, "-N", "-d", db, "--empty-password"], env),
        run([modutil, "-dbdir", db, "-add", "kms", "-libfile", module_path, "-force"], env),
    ]
    for proc in procs:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'Module "kms" added to database.' in procs[1].stdout
    return NssSetup(db, env, keys, certs, cert_files, tmp, procs)


# ---- modutil, certutil -L / -K -------------------------------------------------------------------


def test_modutil_lists_module_and_token(nss, module_path):
    proc = run([tool("modutil"), "-dbdir", nss.db, "-list"], nss.env)
    nss.procs.append(proc)
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split(". kms\n", 1)[1]
    assert f"library name: {module_path}" in section
    assert "status: loaded" in section
    assert re.search(r"^\s+token: nss$", section, re.M), section


def test_certutil_lists_token_certificates(nss):
    proc = run([tool("certutil"), "-L", "-d", nss.db, "-h", "all"], nss.env)
    nss.procs.append(proc)
    assert proc.returncode == 0, proc.stderr
    listed = re.findall(r"^(nss:\S+)\s+(\S+)$", proc.stdout, re.M)
    assert sorted(listed) == [("nss:ec", "u,u,u"), ("nss:rsa", "u,u,u")], proc.stdout
    for name, cert in nss.certs.items():
        one = run([tool("certutil"), "-L", "-d", nss.db, "-n", f"nss:{name}", "-a"], nss.env)
        assert one.returncode == 0, one.stderr
        assert x509.load_pem_x509_certificate(one.stdout.encode()) == cert


def test_certutil_lists_token_keys(nss):
    proc = run([tool("certutil"), "-K", "-d", nss.db, "-h", "all"], nss.env)
    nss.procs.append(proc)
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split('certutil: Checking token "nss"', 1)[1]
    keys = re.findall(r"^<\s*\d+> (\w+)\s+([0-9a-f]+)\s+(.*)$", section, re.M)
    assert sorted(keys) == sorted([("rsa", ckid(nss.keys["rsa"]), "rsa"),
                                   ("ec", ckid(nss.keys["ec"]), "ec")]), proc.stdout


# ---- certutil -R: certificate requests signed in KMS ---------------------------------------------


@pytest.mark.parametrize("name, hash_name, pss, expected_algorithm", [
    ("rsa", "SHA256", False, "sha256WithRSAEncryption"),
    ("rsa", "SHA512", False, "sha512WithRSAEncryption"),
    ("rsa", "SHA256", True, "rsassaPss"),
    ("ec", "SHA256", False, "ecdsa-with-SHA256"),
    ("ec", "SHA384", False, "ecdsa-with-SHA384"),  # P-256 with SHA-384: the digest is truncated
], ids=["rsa-sha256", "rsa-sha512", "rsa-pss-sha256", "ec-sha256", "ec-sha384"])
def test_certutil_request_signed_by_token_key(nss, name, hash_name, pss, expected_algorithm):
    """`certutil -R -h nss -k <CKA_ID>`: the request's signature verifies with KMS's key."""
    out = nss.tmp / f"{name}-{hash_name}-{pss}.csr"
    cmd = [tool("certutil"), "-R", "-d", nss.db, "-h", "nss", "-k", ckid(nss.keys[name]),
           "-s", f"CN=nss request {name},O=pkcs11-kms", "-Z", hash_name, "-a", "-o", str(out)]
    proc = run(cmd + (["--pss"] if pss else []), nss.env)
    nss.procs.append(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check = run([tool("openssl"), "req", "-in", str(out), "-verify", "-noout", "-text"], nss.env)
    assert check.returncode == 0, check.stderr
    assert "verify OK" in check.stdout + check.stderr
    assert f"Signature Algorithm: {expected_algorithm}" in check.stdout
    csr = x509.load_pem_x509_csr(out.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == f"CN=nss request {name},O=pkcs11-kms"
    assert (csr.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
            == nss.keys[name].public_der)


def test_certutil_request_by_certificate_nickname_is_refused(nss):
    """NSS limit: `certutil -R/-S -k <nickname>` looks the private key up by NSS's own CKA_ID
    convention, SHA-1 of the RSA modulus (PK11_FindKeyByDERCert), not by the certificate's CKA_ID;
    the module's CKA_ID is the KMS key id, so name the key by its CKA_ID (certutil -K) instead."""
    proc = run([tool("certutil"), "-R", "-d", nss.db, "-h", "nss", "-k", "nss:rsa",
                "-s", "CN=by nickname", "-Z", "SHA256", "-a", "-o", str(nss.tmp / "nick.csr")],
               nss.env)
    assert proc.returncode != 0
    assert "nss:rsa is neither a key-type nor a nickname nor a key-id" in proc.stderr, proc.stderr


def test_certutil_sha1_request_fails_cleanly(nss):
    """KMS has no SHA-1 signatures: the module refuses, certutil reports it and exits."""
    proc = run([tool("certutil"), "-R", "-d", nss.db, "-h", "nss", "-k", ckid(nss.keys["rsa"]),
                "-s", "CN=sha1", "-Z", "SHA1", "-a", "-o", str(nss.tmp / "sha1.csr")], nss.env)
    assert proc.returncode != 0
    assert "signing of data failed" in proc.stderr, proc.stderr


# ---- TLS: selfserv (server) and tstclnt (client) with token keys ---------------------------------


@pytest.fixture(scope="module")
def selfserv(nss):
    """selfserv serving the token's RSA certificate (-n) and EC certificate (-e), with NSS's own
    PKCS#11 call log (NSS_DEBUG_PKCS11_MODULE) in `selfserv-pkcs11.log`. selfserv has no bind
    address option: tls_server makes it listen on loopback only."""
    port = free_port()
    cmd = [tool("selfserv"), "-d", nss.db, "-n", "nss:rsa", "-e", "nss:ec", "-p", str(port),
           "-V", "tls1.2:tls1.3"]
    trace = nss.tmp / "selfserv-pkcs11.log"
    env = dict(nss.env, NSS_DEBUG_PKCS11_MODULE="kms", NSPR_LOG_MODULES="nss_mod_log:4,sync",
               NSPR_LOG_FILE=str(trace))
    with tls_server(cmd, env, port, nss.tmp / "selfserv.log") as proc:
        yield port, proc, trace


@pytest.mark.parametrize("version, sigalgs, name, signature_type", [
    ("-tls1_2", "RSA+SHA256", "rsa", "RSA"),
    ("-tls1_2", "RSA-PSS+SHA384", "rsa", "RSA-PSS"),
    ("-tls1_3", "RSA-PSS+SHA256", "rsa", "RSA-PSS"),
    ("-tls1_2", "ECDSA+SHA256", "ec", "ECDSA"),
    ("-tls1_3", "ECDSA+SHA256", "ec", "ECDSA"),
], ids=["tls12-rsa-pkcs1", "tls12-rsa-pss", "tls13-rsa-pss", "tls12-ecdsa", "tls13-ecdsa"])
def test_selfserv_serves_tls_with_token_key(nss, selfserv, version, sigalgs, name, signature_type):
    """An NSS TLS server signs its handshake in KMS; OpenSSL's client verifies it (TLS 1.2 with
    an RSA key is where NSS copies the private key with C_CopyObject)."""
    port, proc, trace = selfserv
    both = nss.tmp / "both.pem"
    both.write_bytes(pem(nss.certs["rsa"]) + pem(nss.certs["ec"]))
    client = run([tool("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", version,
                  "-sigalgs", sigalgs, "-CAfile", str(both), "-verify_return_error",
                  "-verify_ip", "127.0.0.1", "-servername", "localhost"], nss.env, timeout=30)
    assert proc.poll() is None, "selfserv died"
    out = client.stdout
    assert client.returncode == 0, out + client.stderr
    assert "Verify return code: 0 (ok)" in out, out
    # OpenSSL 3.0 names the kind ("RSA-PSS") and prints "CN = x"; 3.5 the TLS scheme
    # ("rsa_pss_rsae_sha256") and "CN=x"
    scheme = {"RSA": "rsa_pkcs1_sha", "RSA-PSS": "rsa_pss_rsae_sha",
              "ECDSA": r"ecdsa_secp\d+r1_sha"}
    assert re.search(rf"Peer signature type: ({signature_type}|{scheme[signature_type]}\d+)\n",
                     client.stderr + out), client.stderr + out
    assert f"subject=CN=nss {name} test" in out.replace(" = ", "=")
    if (version, name) == ("-tls1_2", "rsa"):
        # NSS copies an RSA server key into a session object, the second time with an empty
        # template (docs/design.md, "NSS"); both copies must succeed.
        copies = [body for function, body in nss_calls(trace.read_text())
                  if function == "C_CopyObject"]
        assert len(copies) >= 2, copies
        assert all("rv = CKR_OK" in body for body in copies), copies
        assert any("ulCount = 0\n" in body for body in copies), copies


def test_tstclnt_authenticates_with_token_key(nss, tmp_path):
    """tstclnt (an NSS client) presents the token's EC certificate; OpenSSL's s_server requires
    and verifies it, and prints it on its status page."""
    server_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "server.key").write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    server_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(server_key.public_key()).serial_number(1)
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .sign(server_key, hashes.SHA256()))
    (tmp_path / "server.pem").write_bytes(pem(server_cert))
    port = free_port()
    cmd = [tool("openssl"), "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "1",
           "-cert", str(tmp_path / "server.pem"), "-key", str(tmp_path / "server.key"),
           "-CAfile", str(nss.cert_files["ec"]), "-Verify", "1", "-www"]
    server_env = {k: v for k, v in nss.env.items() if k != "OPENSSL_CONF"}
    log = tmp_path / "s_server.log"
    request = tmp_path / "request.txt"
    request.write_text("GET / HTTP/1.0\r\n\r\n")
    with tls_server(cmd, server_env, port, log, ready_text="ACCEPT") as server:
        proc = run([tool("tstclnt"), "-h", "127.0.0.1", "-p", str(port), "-d", nss.db,
                    "-n", "nss:ec", "-o", "-V", "tls1.3:tls1.3", "-A", str(request)], nss.env,
                   timeout=30)
        server.wait(timeout=20)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = proc.stdout
    assert "Client certificate" in page, page
    assert "Subject: CN=nss ec test" in page.split("Client certificate", 1)[1]
    # OpenSSL 3.0 prints "CN = x", 3.5 "CN=x"
    assert "depth=0 CN=nss ec test\nverify return:1" in log.read_text().replace(" = ", "=")


def test_nss_hosts_log_nothing(nss):
    """No traceback and no module log line (warning or worse) in any NSS tool's output."""
    assert len(nss.procs) >= 2
    for proc in nss.procs:
        assert "Traceback" not in proc.stderr, f"{proc.args}: {proc.stderr}"
        assert "pkcs11-kms[" not in proc.stderr, f"{proc.args}: {proc.stderr}"
