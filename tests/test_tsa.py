"""`pkcs11-kms tsa`: RFC 3161 replies signed through the PKCS#11 module by RSA and EC keys in the
KMS emulator, checked by `openssl ts -verify`; tampering, rejections, the HTTP mode, bad certs."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from keyseed import seed_key, write_config

CLI = [sys.executable, "-m", "pkcs11_kms", "tsa"]
KEYS = {"rsa": ("tsa-rsa", "RSA_2048"), "ec": ("tsa-ec", "ECC_NIST_P384")}


def openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    path = shutil.which("openssl")
    assert path, "openssl is not installed"
    return subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pkcs11-kms tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(ca_key, ca_cert, subject: str, public_key, eku: bool = True) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(ca_cert.subject)
        .public_key(public_key).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                     False), critical=True)
    )
    if eku:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
    return builder.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory, kms_server):
    """Two KMS keys, a software CA, and TSA certificates for the KMS keys' public keys."""
    base = tmp_path_factory.mktemp("tsa")
    client = kms_server.client()
    keys = {kind: seed_key(client, alias, spec, "SIGN_VERIFY") for kind, (alias, spec) in
            KEYS.items()}
    config = write_config(base / "config.toml", kms_server,
                          '[[token]]\nlabel = "tsa"\nkeys = ["alias/tsa-rsa", "alias/tsa-ec"]\n')
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder()
          .subject_name(_name("TSA test CA")).issuer_name(_name("TSA test CA"))
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (base / "ca.pem").write_bytes(ca.public_bytes(pem))
    for kind, key in keys.items():
        public = serialization.load_der_public_key(key.public_der)
        cert = _issue(ca_key, ca, f"TSA {kind}", public)
        (base / f"{kind}.pem").write_bytes(cert.public_bytes(pem))
        (base / f"{kind}-no-eku.pem").write_bytes(
            _issue(ca_key, ca, f"TSA {kind}", public, eku=False).public_bytes(pem))
    (base / "data.txt").write_text("a document worth a time-stamp\n")
    return base, config


def uri(kind: str) -> str:
    return f"pkcs11:token=tsa;object={KEYS[kind][0]};type=private"


def query(base: Path, name: str, *options: str) -> Path:
    out = base / name
    proc = openssl("ts", "-query", "-data", "data.txt", *options, "-out", out.name, cwd=base)
    assert proc.returncode == 0, proc.stderr
    return out


def tsa(base: Path, config: str, kind: str, tsq: Path, tsr: Path, *extra: str,
        cert: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PKCS11_KMS_CONFIG": config}
    proc = subprocess.run([*CLI, "--key", uri(kind), "--cert", str(base / (cert or f"{kind}.pem")),
                           "--in", str(tsq), "--out", str(tsr), *extra],
                          env=env, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def verify(base: Path, tsr: Path, tsq: Path, kind: str) -> subprocess.CompletedProcess[str]:
    return openssl("ts", "-verify", "-in", tsr.name, "-queryfile", tsq.name, "-CAfile", "ca.pem",
                   "-untrusted", f"{kind}.pem", cwd=base)


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_reply_verifies_with_openssl(pki, kind):
    base, config = pki
    tsq = query(base, f"{kind}.tsq", "-sha256", "-cert")
    tsr = base / f"{kind}.tsr"
    proc = tsa(base, config, kind, tsq, tsr)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"granted serial [0-9a-f]+", proc.stderr)
    checked = verify(base, tsr, tsq, kind)
    assert checked.returncode == 0 and "Verification: OK" in checked.stdout, checked.stderr
    text = openssl("ts", "-reply", "-in", tsr.name, "-text", cwd=base).stdout
    assert "Status: Granted." in text and f"TSA: DirName:/O=pkcs11-kms tests/CN=TSA {kind}" in text
    assert "Policy OID: 1.2.3.4.1" in text or "Policy OID: tsa_policy1" in text


def test_config_option_nonce_free_query_and_other_imprint(pki):
    """--config reaches the module (as $PKCS11_KMS_CONFIG); a query without nonce or certReq,
    SHA-512."""
    base, config = pki
    tsq = query(base, "plain.tsq", "-sha512", "-no_nonce")
    tsr = base / "plain.tsr"
    env = {k: v for k, v in os.environ.items() if k != "PKCS11_KMS_CONFIG"}
    proc = subprocess.run([*CLI, "--config", config, "--key", uri("ec"), "--cert",
                           str(base / "ec.pem"), "--policy", "1.3.6.1.4.1.99999.1"],
                          input=tsq.read_bytes(), env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    tsr.write_bytes(proc.stdout)
    checked = verify(base, tsr, tsq, "ec")
    assert checked.returncode == 0, checked.stderr
    text = openssl("ts", "-reply", "-in", tsr.name, "-text", cwd=base).stdout
    assert "Policy OID: 1.3.6.1.4.1.99999.1" in text and "Nonce: unspecified" in text


@pytest.mark.parametrize("where", ["signature", "time"])
def test_tampered_reply_fails_verification(pki, where):
    base, config = pki
    tsq = query(base, f"t-{where}.tsq", "-sha256", "-cert")
    tsr = base / f"t-{where}.tsr"
    assert tsa(base, config, "rsa", tsq, tsr).returncode == 0
    assert verify(base, tsr, tsq, "rsa").returncode == 0
    data = bytearray(tsr.read_bytes())
    if where == "signature":
        data[-1] ^= 0x01  # the last byte of the SignerInfo's signature
    else:
        at = re.search(rb"\x18\x0f(\d{14})Z", data).start(1)  # TSTInfo genTime
        data[at + 3] = ord("0") + (data[at + 3] - ord("0") + 1) % 10  # another year
    tsr.write_bytes(bytes(data))
    checked = verify(base, tsr, tsq, "rsa")
    assert checked.returncode != 0 and "Verification: FAILED" in checked.stdout


def test_reply_to_another_query_fails_verification(pki):
    base, config = pki
    tsq = query(base, "one.tsq", "-sha256")
    other = base / "other.tsq"
    proc = openssl("ts", "-query", "-digest", "00" * 32, "-sha256", "-out", other.name, cwd=base)
    assert proc.returncode == 0
    tsr = base / "one.tsr"
    assert tsa(base, config, "ec", tsq, tsr).returncode == 0
    assert verify(base, tsr, other, "ec").returncode != 0


@pytest.mark.parametrize("options, failure", [
    (("-sha1",), "unrecognized or unsupported algorithm identifier"),
    (("-sha256", "-tspolicy", "1.2.3.9"), "the requested TSA policy is not supported"),
])
def test_unacceptable_queries_get_a_rejection(pki, options, failure):
    base, config = pki
    tsq = query(base, "rejected.tsq", *options)
    tsr = base / "rejected.tsr"
    proc = tsa(base, config, "rsa", tsq, tsr)
    assert proc.returncode == 1 and "rejected" in proc.stderr
    text = openssl("ts", "-reply", "-in", tsr.name, "-text", cwd=base).stdout
    assert "Status: Rejected." in text and failure in text


def test_certificates_that_cannot_work_are_refused(pki):
    base, config = pki
    tsq = query(base, "refused.tsq", "-sha256")
    tsr = base / "refused.tsr"
    proc = tsa(base, config, "rsa", tsq, tsr, cert="rsa-no-eku.pem")
    assert proc.returncode == 2 and "no extendedKeyUsage timeStamping" in proc.stderr
    proc = tsa(base, config, "rsa", tsq, tsr, cert="ec.pem")
    assert proc.returncode == 2 and "is not the certificate of tsa/tsa-rsa" in proc.stderr
    assert not tsr.exists()


def test_http_mode_answers_queries(pki):
    base, config = pki
    env = {**os.environ, "PKCS11_KMS_CONFIG": config}
    server = subprocess.Popen([*CLI, "--serve", "--port", "0", "--key", uri("ec"), "--cert",
                               str(base / "ec.pem")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+/) with tsa/tsa-ec", first)
        assert match, first + server.stderr.read()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for n in range(2):
            tsq = query(base, f"http{n}.tsq", "-sha384", "-cert")
            request = urllib.request.Request(
                match[1], data=tsq.read_bytes(),
                headers={"Content-Type": "application/timestamp-query"})
            with opener.open(request, timeout=30) as response:
                assert response.headers["Content-Type"] == "application/timestamp-reply"
                tsr = base / f"http{n}.tsr"
                tsr.write_bytes(response.read())
            assert verify(base, tsr, tsq, "ec").returncode == 0
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
    log = server.stderr.read()
    assert log.count("granted serial") == 2 and "Traceback" not in log


@pytest.mark.parametrize("host, allowed", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                           ("0.0.0.0", False), ("::", False), ("192.0.2.1", False),
                                           ("example.com", False)])
def test_serve_listens_on_loopback_only(host, allowed):
    from pkcs11_kms.tools.tsa_cmd import Failed, loopback

    if allowed:
        assert loopback(host) in ("127.0.0.1", "::1")
    else:
        with pytest.raises(Failed, match="loopback addresses only"):
            loopback(host)
