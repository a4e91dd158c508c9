"""Helpers for the tests that drive real hosts: the Debian package of every tool, running a host
(never killed by a signal, never a Python traceback), loopback ports, TLS servers, certificates
made by a KMS key."""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keyseed import SeededKey

# The JDK scripts/setup.sh installs: openjdk-17 on Debian 12, openjdk-21 on Debian 13.
JDK = ("openjdk-17-jdk-headless" if "bookworm" in Path("/etc/os-release").read_text()
       else "openjdk-21-jdk-headless")

# Every tool a test runs -> the Debian package that has it (scripts/setup.sh installs them).
PACKAGES = {
    "certtool": "gnutls-bin", "certutil": "libnss3-tools", "curl": "curl",
    "firefox-esr": "firefox-esr", "gnutls-cli": "gnutls-bin", "gnutls-serv": "gnutls-bin",
    "jarsigner": JDK, "java": JDK, "keytool": JDK, "modutil": "libnss3-tools", "nginx": "nginx",
    "openssl": "openssl", "osslsigncode": "osslsigncode", "p11-kit": "p11-kit",
    "p11tool": "gnutls-bin", "pkcs11-tool": "opensc", "selfserv": "libnss3-tools",
    "ssh": "openssh-client", "ssh-add": "openssh-client", "ssh-agent": "openssh-client",
    "ssh-keygen": "openssh-client", "sshd": "openssh-server", "tstclnt": "libnss3-tools",
    "unshare": "util-linux",
}


def tool(name: str, package: str | None = None) -> str:
    """A tool's path; a missing tool fails the test (CI must install it), never skips it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    assert path, (f"{name} is not installed (Debian package {package or PACKAGES.get(name)}): "
                  "CI must provide it")
    return path


def run(cmd: list[str], env: dict[str, str], timeout: float = 60, *, check_stderr: bool = True,
        **kw) -> subprocess.CompletedProcess:
    """Runs a host: it must never die by a signal nor show a Python traceback."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=kw.pop("stdin", subprocess.DEVNULL), **kw)
    assert proc.returncode >= 0, f"{cmd[0]} died by signal {-proc.returncode}: {proc.stderr}"
    if check_stderr:
        assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30,
                   log: Path | None = None, ready_text: str | None = None) -> None:
    """Until the server accepts connections: a probe connection, or `ready_text` in its log for
    servers that count connections (openssl s_server -naccept)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args[0]} exited with {proc.returncode}"
        if ready_text is not None:
            if log is not None and ready_text in log.read_text():
                return
        else:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"{proc.args[0]} is not listening on 127.0.0.1:{port}")


HARNESS_DIR = Path(__file__).resolve().parent / "harness"


def build_c_host(name: str, out_dir: Path) -> str:
    """Compiles tests/harness/NAME.c (warnings are errors) into OUT_DIR; returns the program."""
    gcc = shutil.which("gcc")
    assert gcc, "gcc is not installed: CI must provide it"
    out = Path(out_dir) / name
    subprocess.run([gcc, "-Wall", "-Wextra", "-Werror", "-O1", "-o", str(out),
                    str(HARNESS_DIR / f"{name}.c"), "-ldl", "-lpthread"],
                   check=True, capture_output=True, text=True, timeout=120)
    return str(out)


@functools.cache
def bind_loopback() -> str:
    """An LD_PRELOAD library that turns a server's wildcard bind() into a loopback one."""
    source = Path(__file__).parent / "harness" / "bind_loopback.c"
    out = Path(tempfile.mkdtemp(prefix="bind-loopback-")) / "bind_loopback.so"
    subprocess.run([tool("cc", "gcc"), "-shared", "-fPIC", "-o", str(out), str(source), "-ldl"],
                   check=True)
    return str(out)


@contextmanager
def tls_server(cmd: list[str], env: dict[str, str], port: int, log: Path,
               ready_text: str | None = None, cwd: Path | None = None):
    """A server process writing to `log`, listening on loopback only (selfserv and gnutls-serv
    have no option for it); killed (and reaped) on the way out."""
    env = {**env, "LD_PRELOAD": bind_loopback()}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
    try:
        wait_listening(port, proc, log=log, ready_text=ready_text)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_tlv(der: bytes) -> tuple[int, int]:
    """(offset of the content, offset after the element) of the DER element starting at 0."""
    first = der[1]
    if first < 0x80:
        return 2, 2 + first
    count = first & 0x7F
    length = int.from_bytes(der[2:2 + count], "big")
    return 2 + count, 2 + count + length


def kms_self_signed(client, key: SeededKey, common_name: str, days: int = 30) -> x509.Certificate:
    """A self-signed certificate for a KMS key, signed by KMS with that key (SHA-256).

    `cryptography` cannot sign with a key it does not hold, so the certificate is built and signed
    with a throwaway key of the same kind (for the DER layout), and its signature is replaced by
    KMS's signature over the same TBSCertificate."""
    public_key = serialization.load_der_public_key(key.public_der)
    if isinstance(public_key, rsa.RSAPublicKey):
        throwaway = rsa.generate_private_key(65537, 2048)
        algorithm = "RSASSA_PKCS1_V1_5_SHA_256"
    else:
        throwaway = ec.generate_private_key(ec.SECP256R1())
        algorithm = "ECDSA_SHA_256"
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    draft = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(throwaway, hashes.SHA256())
    )
    tbs = draft.tbs_certificate_bytes
    outer = draft.public_bytes(serialization.Encoding.DER)
    start, _ = _der_tlv(outer)
    rest = outer[start + len(tbs):]
    algorithm_id = rest[:_der_tlv(rest)[1]]
    signature = client.sign(KeyId=key.key_id, Message=hashlib.sha256(tbs).digest(),
                            MessageType="DIGEST", SigningAlgorithm=algorithm)["Signature"]
    bit_string = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    body = tbs + algorithm_id + bit_string
    cert = x509.load_der_x509_certificate(b"\x30" + _der_length(len(body)) + body)
    cert.verify_directly_issued_by(cert)  # KMS's signature, checked with KMS's public key
    return cert


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def verify_signature(public_der: bytes, signature: bytes, data: bytes, algorithm,
                     pss: bool = False) -> None:
    """Checks a signature with `cryptography` against KMS's public key; raises if invalid."""
    key = serialization.load_der_public_key(public_der)
    if isinstance(key, rsa.RSAPublicKey):
        pad = (padding.PSS(padding.MGF1(algorithm), algorithm.digest_size) if pss
               else padding.PKCS1v15())
        key.verify(signature, data, pad, algorithm)
    else:
        key.verify(signature, data, ec.ECDSA(algorithm))


def nss_calls(log: str) -> list[tuple[str, str]]:
    """NSS_DEBUG_PKCS11_MODULE's log as (function, its argument and result lines)."""
    calls: list[tuple[str, str]] = []
    for line in log.splitlines():
        _, _, text = line.partition("]: ")
        if text.startswith("C_"):
            calls.append((text.strip(), ""))
        elif calls:
            calls[-1] = (calls[-1][0], calls[-1][1] + text.strip() + "\n")
    return calls


def ckid(key: SeededKey) -> str:
    """CKA_ID in hex, as certutil -K prints it: the key id's 128 bits."""
    return key.key_id.replace("-", "")
