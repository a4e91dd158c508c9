"""Logs cannot be forged and do not leak (docs/security.md, "Logs").

- A KMS error message with line breaks in it (a fake KMS on loopback answers every request with
  one) stays inside one line of the module's log: no line can start inside outside text.
- At the most verbose level, from a C host (pkcs11-tool signing and decrypting, with
  PKCS11_KMS_LOG=debug and a log
  file) and from a Python host that turned debug logging on for everything
  (logging.basicConfig(level=DEBUG), so botocore, aiobotocore and aiohttp log to the host's
  stderr), nothing the module and the host wrote holds the message signed, its digest, the
  plaintext, the ciphertext, the PIN, the AWS secret key or the session token: raw, hex or base64.
  The Python host's own botocore still logs its own requests.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hosts import build_c_host, ckid, run, tool
from keyseed import REGION, seed_key

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} pkcs11-kms\[\d+\]: "
                  r"(DEBUG|INFO|WARNING|ERROR) ")
FORGED = "2026-01-01T00:00:00.000 pkcs11-kms[1]: ERROR forged"
MESSAGE = b"message-to-sign-6a1f0c5e9b7d4a23-never-logged"
PLAINTEXT = b"plaintext-2c9e8f14d7b3a650-never-logged"
PIN = "pin-5d8e1a7c3f924b06"
SECRET_KEY = "secretkey9f3b7e1d4c8a2b6e0f5d3c7a9b1e4f8d2c6a0b3e"
SESSION_TOKEN = "sessiontoken0e7c4b9a2d6f1e8c3b5a7d9f0e2c4b6a8d1f3e5c7b9a"


class _ForgingKms(http.server.BaseHTTPRequestHandler):
    """Answers every KMS request with an error whose message tries to start log lines."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"__type": "KMSInternalException",
                           "message": f"denied\n{FORGED}\r{FORGED}\u2028{FORGED}\x1b[2K"}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("x-amzn-RequestId", "forged-request")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def forging_kms():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ForgingKms)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_kms_message_cannot_start_a_log_line(forging_kms, tmp_path, module_path):
    host = build_c_host("secure_host", tmp_path)
    log = tmp_path / "kms.log"
    config = tmp_path / "config.toml"
    config.write_text(f'region = "{REGION}"\nendpoint_url = "{forging_kms}"\nmax_attempts = 1\n'
                      f'log_file = "{log}"\n[[token]]\nlabel = "forge"\nkeys = ["alias/forge"]\n')
    env = {**os.environ, "PKCS11_KMS_CONFIG": str(config), "PKCS11_KMS_LOG": "debug"}
    proc = run([host, module_path], env, timeout=60)
    assert proc.returncode == 0 and "C_Initialize 0\n" in proc.stdout, proc.stdout + proc.stderr
    text = log.read_text()
    assert "request_id=forged-request" in text and "denied" in text  # KMS's answer was logged
    assert "\\n" + FORGED in text and "\\r" + FORGED in text and "\\u2028" + FORGED in text
    assert "\x1b" not in text and "\\x1b[2K" in text
    for line in text.splitlines():
        assert LINE.match(line), line
    assert not re.search(r"^" + re.escape(FORGED), text, re.MULTILINE)


# --- no secrets at the most verbose level ----------------------------------------------------


def forms(data: bytes) -> list[bytes]:
    """How `data` could show in a log: raw, hex, and base64 at any alignment inside a longer
    buffer (the last, partial group of each left out)."""
    out = [data, data.hex().encode(), data.hex().upper().encode()]
    for skip in range(3):
        out.append(base64.b64encode(data[skip:])[:-4])
    return out


def assert_nothing_secret(written: bytes, secrets: dict[str, bytes]) -> None:
    found = [name for name, value in secrets.items() for form in forms(value) if form in written]
    assert not found, f"{found} in what the module wrote"


@pytest.fixture(scope="module")
def secret_env(https_kms_server, tmp_path_factory):
    """A token over HTTPS with an EC signing key and an RSA decryption key; the environment with
    distinctive credentials (the emulator takes any)."""
    client = https_kms_server.client()
    ec = seed_key(client, None, "ECC_NIST_P256", "SIGN_VERIFY")
    rsa = seed_key(client, None, "RSA_2048", "ENCRYPT_DECRYPT")
    folder = tmp_path_factory.mktemp("secrets")
    log = folder / "kms.log"
    config = folder / "config.toml"
    config.write_text(
        f'region = "{REGION}"\nendpoint_url = "{https_kms_server.endpoint_url}"\n'
        f'ca_bundle = "{https_kms_server.ca_bundle}"\nlog_file = "{log}"\nlog_level = "debug"\n'
        f'[[token]]\nlabel = "secrets"\nkeys = [{{ key = "{ec.arn}", label = "ec" }}, '
        f'{{ key = "{rsa.arn}", label = "rsa" }}]\n')
    env = {**os.environ, "PKCS11_KMS_CONFIG": str(config), "PKCS11_KMS_LOG": "debug",
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_SESSION_TOKEN": SESSION_TOKEN,
           "AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEYID0001"}
    return env, log, folder, https_kms_server, ec, rsa


def secrets(ciphertext: bytes) -> dict[str, bytes]:
    return {"message": MESSAGE, "digest": hashlib.sha256(MESSAGE).digest(),
            "plaintext": PLAINTEXT, "ciphertext": ciphertext, "pin": PIN.encode(),
            "secret key": SECRET_KEY.encode(), "session token": SESSION_TOKEN.encode()}


def test_c_host_at_debug_level(secret_env, module_path):
    env, log, folder, _, ec, rsa = secret_env
    log.write_text("")
    (folder / "msg").write_bytes(MESSAGE)
    (folder / "plain").write_bytes(PLAINTEXT)
    pkcs11_tool = tool("pkcs11-tool")
    common = [pkcs11_tool, "--module", module_path, "--token-label", "secrets", "--login",
              "--pin", PIN]
    written = b""

    def step(*args: str) -> None:
        nonlocal written
        proc = subprocess.run([*common, *args], env=env, capture_output=True, timeout=120,
                              stdin=subprocess.DEVNULL, check=False)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        written += proc.stderr  # the module writes to stderr and its log file, never stdout

    public = serialization.load_der_public_key(rsa.public_der)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    (folder / "ct").write_bytes(public.encrypt(PLAINTEXT, oaep))
    # pkcs11-tool picks the key by --id (docs/design.md, "pkcs11-tool")
    step("--sign", "-m", "ECDSA-SHA256", "--id", ckid(ec), "-i", str(folder / "msg"),
         "-o", str(folder / "sig"))
    step("--decrypt", "-m", "RSA-PKCS-OAEP", "--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256",
         "--id", ckid(rsa), "-i", str(folder / "ct"), "-o", str(folder / "back"))
    assert (folder / "back").read_bytes() == PLAINTEXT
    written += log.read_bytes()
    assert b"DEBUG" in written  # the most verbose level was on
    assert_nothing_secret(written, secrets((folder / "ct").read_bytes()))


PYTHON_HOST = r'''
import logging, sys
logging.basicConfig(level=logging.DEBUG, format="%(name)s %(levelname)s %(message)s")
import pkcs11
from pkcs11 import Mechanism, MGF, ObjectClass
lib = pkcs11.lib(sys.argv[1])
with lib.get_token(token_label="secrets").open(user_pin=sys.argv[2]) as s:
    key = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label="ec")
    key.sign(sys.argv[3].encode(), mechanism=Mechanism.ECDSA_SHA256)
    oaep = (Mechanism.SHA256, MGF.SHA256, None)
    public = s.get_key(object_class=ObjectClass.PUBLIC_KEY, label="rsa")
    ciphertext = public.encrypt(sys.argv[4].encode(), mechanism=Mechanism.RSA_PKCS_OAEP,
                                mechanism_param=oaep)
    private = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label="rsa")
    assert private.decrypt(ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP,
                           mechanism_param=oaep) == sys.argv[4].encode()
    print("ciphertext", ciphertext.hex())
# The host's own botocore, after the module's: its debug records are the host's to see.
import botocore.session
session = botocore.session.get_session()
client = session.create_client("kms", endpoint_url=sys.argv[5], verify=sys.argv[6],
                               region_name="eu-west-1", aws_access_key_id="host",
                               aws_secret_access_key="host", aws_session_token="host")
client.list_keys(Limit=1)
print("host done")
'''


def test_python_host_with_debug_logging_everywhere(secret_env, module_path):
    env, log, _, server, _, _ = secret_env
    log.write_text("")
    proc = subprocess.run(
        [sys.executable, "-c", PYTHON_HOST, module_path, PIN, MESSAGE.decode(),
         PLAINTEXT.decode(), server.endpoint_url, server.ca_bundle],
        env=env, capture_output=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    assert b"host done" in proc.stdout
    ciphertext = bytes.fromhex(re.search(rb"ciphertext ([0-9a-f]+)", proc.stdout)[1].decode())
    # the host's own request is logged by botocore as the host asked
    assert b"botocore.endpoint DEBUG Making request for OperationModel(name=ListKeys)" in proc.stderr
    written = proc.stderr + log.read_bytes()
    assert b"DEBUG" in log.read_bytes()
    assert_nothing_secret(written, secrets(ciphertext))
    # none of the module's own requests reached the host's logging
    for operation in (b"Sign", b"Decrypt", b"GetPublicKey"):
        assert b"OperationModel(name=" + operation + b")" not in proc.stderr
