"""The command line, loopback-only binding, clean shutdown, and HTTPS with a test CA (its
private key created 0600)."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import SSLError
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from emulator_support import NO_RETRY

from pkcs11_kms.emulator.testing import EmulatorProcess
from pkcs11_kms.emulator.tls import make_test_pki

ENDPOINT = re.compile(r"^endpoint: (https?)://127\.0\.0\.1:(\d+)\n$")


def _launch(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pkcs11_kms.emulator", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=EmulatorProcess.environment())


def listening(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on `port` (/proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # TCP_LISTEN
                raw = bytes.fromhex(address)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6,
                                           words))
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_line_and_clean_exit(signum):
    port = _free_port()
    proc = _launch("--port", str(port))
    try:
        match = ENDPOINT.match(proc.stdout.readline())
        assert match and match.group(1) == "http" and int(match.group(2)) == port
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        assert listening(port) == {"127.0.0.1"}  # nothing another machine could reach
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""  # nothing but the endpoint on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("args", [
    ["--host", "0.0.0.0"], ["--host", "10.1.2.3"], ["--host", "::"], ["--host", "example.com"],
    ["--tls-cert", "cert.pem"],
])
def test_refuses(args):
    proc = _launch(*args)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert out == "" and "error:" in err


def test_loopback_names():
    from pkcs11_kms.emulator.server import loopback_host

    assert loopback_host("localhost") == "127.0.0.1"
    assert loopback_host("127.0.0.2") == "127.0.0.2"
    assert loopback_host("::1") == "::1"
    with pytest.raises(ValueError):
        loopback_host("192.168.1.1")


def test_test_pki_private_key_is_created_0600(tmp_path):
    """Under umask 0: the mode comes from the key file's creation. A symbolic link planted
    where the key goes is replaced, not written through, and an old key file with a wider mode
    is replaced by a 0600 one."""
    victim = tmp_path / "victim"
    victim.write_text("not a key")
    victim.chmod(0o644)
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "server.key").symlink_to(victim)
    previous = os.umask(0)
    try:
        ca, _, key = make_test_pki(pki)
        st = os.lstat(key)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(ca).st_mode) == 0o666  # the certificates are public
        assert victim.read_text() == "not a key" and stat.S_IMODE(victim.stat().st_mode) == 0o644
        Path(key).chmod(0o644)
        _, _, key = make_test_pki(pki)
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    finally:
        os.umask(previous)
    assert b"PRIVATE KEY" in Path(key).read_bytes()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def https_emulator(pki):
    ca, cert, key = pki
    with EmulatorProcess(tls_cert=cert, tls_key=key, ca_bundle=ca) as server:
        yield server
    assert server.process.returncode == 0  # SIGTERM is a clean exit


def test_https_with_test_ca(https_emulator):
    assert https_emulator.endpoint_url.startswith("https://127.0.0.1:")
    kms = https_emulator.client(config=NO_RETRY)
    key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    signature = kms.sign(KeyId=key_id, Message=b"over TLS", SigningAlgorithm="ECDSA_SHA_256")
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    public = load_der_public_key(kms.get_public_key(KeyId=key_id)["PublicKey"])
    public.verify(signature["Signature"], b"over TLS", ec.ECDSA(hashes.SHA256()))


def test_https_faults(https_emulator):
    https_emulator.set_faults(error_code="ThrottlingException")
    try:
        kms = https_emulator.client(config=NO_RETRY)
        with pytest.raises(Exception) as exc:
            kms.list_keys()
        assert "ThrottlingException" in str(exc.value)
    finally:
        https_emulator.clear_faults()


def test_https_key_material(https_emulator):
    kms = https_emulator.client(config=NO_RETRY)
    meta = kms.create_key(KeySpec="HMAC_512", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    key_id = meta["KeyId"]
    assert len(https_emulator.key_material(key_id).material) == 64


def test_https_needs_the_ca(https_emulator, pki):
    untrusting = https_emulator.client(ca_bundle=ssl.get_default_verify_paths().cafile or True,
                                       config=NO_RETRY)
    with pytest.raises(SSLError):
        untrusting.list_keys()
    host, port = https_emulator.endpoint_url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=pki[0])
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_https_silent_client_does_not_block(https_emulator):
    """A connection that never starts TLS must not stop the server from serving others."""
    host, port = https_emulator.endpoint_url.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5):
        https_emulator.client(config=NO_RETRY).list_keys()
