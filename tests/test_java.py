"""Java (OpenJDK 17, SunPKCS11) with the module: keytool lists the token's keys with their
certificates, jarsigner signs jars with RSA and EC keys, and an independent verifier accepts them;
a JSSE TLS server (KeyStore "PKCS11") serves with the token's RSA key.

Java ignores private keys without a certificate (docs/design.md, "Java"): the token gets
certificates made by signing with its own keys (openssl req -x509 through libp11's engine).
conf/java-pkcs11.cfg is the configuration users copy; the library path reaches it as the system
property pkcs11.kms.library.
Every tool is required: a missing one fails the test instead of skipping it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hosts import tool
from keyseed import key_entries, seed_key, write_config

ENGINE = Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so")
JAVA_CFG = Path(__file__).resolve().parent.parent / "conf" / "java-pkcs11.cfg"
TOKEN = "java"
STOREPASS = "x"  # the token needs no PIN; keytool and jarsigner log in with whatever is given


def run(cmd: list[str], env: dict[str, str], timeout: float = 120, **kw):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL, **kw)
    assert proc.returncode >= 0, f"{cmd[0]} died by signal {-proc.returncode}: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def engine_env(env: dict[str, str], module_path: str, folder: Path) -> dict[str, str]:
    """OPENSSL_CONF loading libp11's engine for the module (init = 0: loaded on use)."""
    assert ENGINE.is_file(), f"{ENGINE} missing: install libengine-pkcs11-openssl"
    conf = folder / "openssl-engine.cnf"
    conf.write_text(
        "openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n"
        "[engine_section]\npkcs11 = pkcs11_section\n"
        f"[pkcs11_section]\nengine_id = pkcs11\ndynamic_path = {ENGINE}\n"
        f"MODULE_PATH = {module_path}\ninit = 0\n"
        "[req]\ndistinguished_name = req_dn\n[req_dn]\n")
    return dict(env, OPENSSL_CONF=str(conf))


def self_signed(env: dict[str, str], uri: str, subject: str, out: Path) -> bytes:
    """A code-signing and TLS server certificate for 127.0.0.1, signed by the token key itself."""
    proc = run([tool("openssl"), "req", "-new", "-x509", "-engine", "pkcs11", "-keyform", "engine",
                "-key", uri, "-subj", subject, "-days", "400", "-sha256",
                "-addext", "basicConstraints=critical,CA:FALSE",
                "-addext", "keyUsage=critical,digitalSignature",
                "-addext", "extendedKeyUsage=codeSigning,serverAuth",
                "-addext", "subjectAltName=IP:127.0.0.1", "-out", str(out)], env)
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


@pytest.fixture(scope="module")
def token(https_kms_server, module_path, tmp_path_factory):
    """A token with an RSA and an EC signing key that have certificates, and one that has none.
    Returns (env, keys, certificates as PEM by label, folder)."""
    folder = tmp_path_factory.mktemp("java")
    client = https_kms_server.client()
    keys = {
        "rsa": seed_key(client, None, "RSA_2048", "SIGN_VERIFY"),
        "ec": seed_key(client, None, "ECC_NIST_P256", "SIGN_VERIFY"),
        "nocert": seed_key(client, None, "RSA_2048", "SIGN_VERIFY"),
    }
    entries = key_entries(keys)
    body = f'[[token]]\nlabel = "{TOKEN}"\nkeys = [{entries}]\n'
    config = folder / "config.toml"
    env = dict(os.environ, PKCS11_KMS_CONFIG=write_config(config, https_kms_server, body))
    certificates = {}
    with_engine = engine_env(env, module_path, folder)
    for label in ("rsa", "ec"):
        certificates[label] = self_signed(with_engine, f"pkcs11:token={TOKEN};object={label};"
                                          "type=private", f"/CN=pkcs11-kms {label} signer",
                                          folder / f"{label}.pem")
    write_config(config, https_kms_server, body + 'certificates = ["rsa.pem", "ec.pem"]\n')
    return env, keys, certificates, folder


def p11_options(module_path: str) -> list[str]:
    return [f"-J-Dpkcs11.kms.library={module_path}", "-storetype", "PKCS11",
            "-providerClass", "sun.security.pkcs11.SunPKCS11", "-providerArg", str(JAVA_CFG),
            "-storepass", STOREPASS]


def fingerprint(pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def test_keytool_lists_keys_with_their_certificates(token, module_path):
    env, _keys, certificates, _folder = token
    proc = run([tool("keytool"), "-list", *p11_options(module_path)], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Keystore provider: SunPKCS11-KMS" in proc.stdout
    entries = dict(re.findall(r"^(\S+), PrivateKeyEntry, ?\n"
                              r"Certificate fingerprint \(SHA-256\): ([0-9A-F:]+)$",
                              proc.stdout, re.MULTILINE))
    assert entries == {label: fingerprint(pem) for label, pem in certificates.items()}, proc.stdout
    # The third key has no certificate: Java does not show it (a Java rule, not the module's).
    assert "Your keystore contains 2 entries" in proc.stdout
    assert "nocert" not in proc.stdout


def make_jar(path: Path) -> None:
    entries = {
        "META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\r\nCreated-By: pkcs11-kms\r\n\r\n",
        "hello.txt": b"signed by a KMS key\n",
        "org/example/Data.bin": os.urandom(4096),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as jar:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.create_system, info.external_attr = 0, 0  # no POSIX modes (jarsigner warns)
            info.compress_type = zipfile.ZIP_DEFLATED
            jar.writestr(info, data)


@pytest.fixture(scope="module")
def truststore(token):
    """A PKCS12 trust store with the two certificates, for jarsigner -verify -strict."""
    env, _keys, _certificates, folder = token
    store = folder / "trust.p12"
    for label in ("rsa", "ec"):
        proc = run([tool("keytool"), "-importcert", "-noprompt", "-alias", label,
                    "-file", str(folder / f"{label}.pem"), "-keystore", str(store),
                    "-storetype", "PKCS12", "-storepass", "changeit"], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return store


def sign_jar(token, module_path, tmp_path, label: str, sigalg: str | None):
    env = token[0]
    jar = tmp_path / "app.jar"
    make_jar(jar)
    extra = ["-sigalg", sigalg] if sigalg else []
    proc = run([tool("jarsigner"), "-keystore", "NONE", *p11_options(module_path), *extra,
                str(jar), label], env)
    return jar, proc


def verify_jar(env, truststore: Path, jar: Path, label: str, certificate: Path) -> str:
    """jarsigner -verify -strict against the trust store, then the signature block checked by
    OpenSSL as a CMS signature over the .SF file (an independent verifier)."""
    proc = run([tool("jarsigner"), "-verify", "-strict", "-verbose", "-keystore", str(truststore),
                "-storetype", "PKCS12", "-storepass", "changeit", str(jar)], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "jar verified." in proc.stdout
    assert "Warning" not in proc.stdout, proc.stdout
    base = label.upper()
    with zipfile.ZipFile(jar) as z:
        names = set(z.namelist())
        block = next(n for n in names if re.fullmatch(rf"META-INF/{base}\.(RSA|EC)", n))
        (jar.parent / "block.der").write_bytes(z.read(block))
        (jar.parent / "sig.sf").write_bytes(z.read(f"META-INF/{base}.SF"))
    cms = run([tool("openssl"), "cms", "-verify", "-inform", "DER", "-binary",
               "-in", str(jar.parent / "block.der"), "-content", str(jar.parent / "sig.sf"),
               "-CAfile", str(certificate), "-purpose", "any", "-out", os.devnull], env)
    assert cms.returncode == 0, cms.stderr
    return proc.stdout


@pytest.mark.parametrize("label, sigalg, shown", [
    ("rsa", None, "SHA256withRSA, 2048-bit key"),
    ("rsa", "SHA512withRSA", "SHA512withRSA, 2048-bit key"),
    ("ec", None, "SHA256withECDSA, 256-bit key"),
    ("ec", "SHA384withECDSA", "SHA384withECDSA, 256-bit key"),  # digest longer than the curve
])
def test_jarsigner_signs_with_token_key(token, truststore, module_path, tmp_path, label, sigalg,
                                        shown):
    env, _keys, _certificates, folder = token
    jar, proc = sign_jar(token, module_path, tmp_path, label, sigalg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "jar signed." in proc.stdout
    out = verify_jar(env, truststore, jar, label, folder / f"{label}.pem")
    # jarsigner's default: SHA-256 in JDK 17, SHA-384 in JDK 21 (Debian 13); the JDK of the one used
    jdk = re.search(r"/java-(\d+)-", os.path.realpath(tool("jarsigner")))
    if sigalg is None and jdk and int(jdk[1]) > 17:
        shown = shown.replace("SHA256", "SHA384")
    assert f"Signature algorithm: {shown}" in out


def test_jarsigner_rsassa_pss(token, truststore, module_path, tmp_path):
    env, _keys, _certificates, folder = token
    jar, proc = sign_jar(token, module_path, tmp_path, "rsa", "RSASSA-PSS")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = verify_jar(env, truststore, jar, "rsa", folder / "rsa.pem")
    assert "Signature algorithm: RSASSA-PSS" in out


# A TLS server on the token's key through SunPKCS11 and JSSE, as a Java application would run one:
# KeyStore "PKCS11" from conf/java-pkcs11.cfg, KeyManagerFactory, SSLServerSocket.
TLS_SERVER = """
import java.io.OutputStream;
import java.net.InetAddress;
import java.security.KeyStore;
import java.security.Provider;
import java.security.Security;
import javax.net.ssl.*;

public class KmsTlsServer {
    public static void main(String[] args) throws Exception {
        Provider provider = Security.getProvider("SunPKCS11").configure(args[0]);
        Security.addProvider(provider);
        KeyStore store = KeyStore.getInstance("PKCS11", provider);
        store.load(null, "x".toCharArray());
        KeyManagerFactory keys = KeyManagerFactory.getInstance("SunX509");
        keys.init(store, "x".toCharArray());
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(keys.getKeyManagers(), null, null);
        SSLServerSocket server = (SSLServerSocket) context.getServerSocketFactory()
            .createServerSocket(Integer.parseInt(args[1]), 8, InetAddress.getByName("127.0.0.1"));
        System.out.println("listening");
        System.out.flush();
        while (true) {
            try (SSLSocket socket = (SSLSocket) server.accept()) {
                socket.startHandshake();
                System.out.println("served " + socket.getSession().getProtocol());
                OutputStream out = socket.getOutputStream();
                out.write("ok".getBytes());
                out.flush();
            } catch (Exception e) {
                System.out.println("failed: " + e);
            }
            System.out.flush();
        }
    }
}
"""


@pytest.fixture(scope="module")
def java_tls_server(token, module_path, https_kms_server, tmp_path_factory):
    """The server above on a token holding only the RSA key and its certificate (JSSE would pick
    the EC key for TLS 1.3 clients that offer ECDSA first). Yields (port, log path)."""
    env, keys, _certificates, token_folder = token
    folder = tmp_path_factory.mktemp("java-tls")
    shutil.copy(token_folder / "rsa.pem", folder / "rsa.pem")
    config = write_config(folder / "config.toml", https_kms_server,
                          f'[[token]]\nlabel = "java-tls"\nkeys = [{{ key = "{keys["rsa"].arn}", '
                          'label = "rsa" }]\ncertificates = ["rsa.pem"]\n')
    env = dict(env, PKCS11_KMS_CONFIG=config)
    source = folder / "KmsTlsServer.java"
    source.write_text(TLS_SERVER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = folder / "server.log"
    process = None
    try:
        with open(log, "w") as out:
            process = subprocess.Popen(
                [tool("java"), f"-Dpkcs11.kms.library={module_path}", str(source), str(JAVA_CFG),
                 str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while "listening" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield port, log
    finally:
        if process is not None:
            process.kill()
            process.wait(timeout=10)


def tls_handshake(port: int, certificate: Path, version: ssl.TLSVersion) -> str:
    """Python's TLS client (OpenSSL) checks the server's handshake signature and certificate."""
    context = ssl.create_default_context(cafile=str(certificate))
    context.minimum_version = context.maximum_version = version
    with (socket.create_connection(("127.0.0.1", port), timeout=60) as raw,
          context.wrap_socket(raw, server_hostname="127.0.0.1") as tls):
        assert tls.recv(2) == b"ok"
        return tls.version() or ""


def server_line(log: Path, before: int) -> str:
    """The server's report of the connection made after it had written `before` lines."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines()
        if len(lines) > before:
            return lines[before]
        time.sleep(0.1)
    return "(no report)"


def handshake_or_server_error(port: int, log: Path, certificate: Path, version) -> str:
    before = len(log.read_text().splitlines())
    try:
        got = tls_handshake(port, certificate, version)
    except (ssl.SSLError, OSError) as e:
        raise AssertionError(f"client: {e}; server: {server_line(log, before)}") from e
    assert server_line(log, before).startswith("served "), log.read_text()
    return got


def test_java_tls12_server_with_token_key(token, java_tls_server):
    port, log = java_tls_server
    certificate = token[3] / "rsa.pem"
    assert handshake_or_server_error(port, log, certificate, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"


def test_java_tls13_server_with_rsa_token_key(token, java_tls_server):
    port, log = java_tls_server
    certificate = token[3] / "rsa.pem"
    assert handshake_or_server_error(port, log, certificate, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
