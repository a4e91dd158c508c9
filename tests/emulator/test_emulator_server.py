"""The command line, loopback-only binding, clean shutdown, and HTTPS with a test CA."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import subprocess
import sys

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
