"""Helpers of the KMS backend tests: backend targets, a scripted KMS endpoint, TLS, fork."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import boto3

from pkcs11_kms import kms

REGION = "eu-west-1"

# Which targets give real AWS KMS semantics for Sign/Verify/Encrypt/Decrypt and key states.
# Plain moto does not (docs/design.md, "The emulator"); the project's emulator does.
EXACT_TARGETS = {"moto": False, "emulator": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MotoServer:
    endpoint_url: str
    process: subprocess.Popen

    def client(self, region: str = REGION) -> Any:
        return boto3.client("kms", region_name=region, endpoint_url=self.endpoint_url)


@dataclass
class Target:
    """A backend under contract, and how to seed keys in what it talks to."""

    name: str
    backend: Any  # KmsBackend
    create_key: Callable[..., kms.KeyMetadata]  # (spec, usage, alias=None, tags=None)
    set_state: Callable[[str, str], None]  # (key id, "Disabled" | "PendingDeletion")
    shared: dict[tuple[str, str], kms.KeyMetadata] = field(default_factory=dict)

    def shared_key(self, spec: str, usage: str) -> kms.KeyMetadata:
        """An Enabled key for tests that do not change it, made once per session."""
        if (spec, usage) not in self.shared:
            self.shared[spec, usage] = self.create_key(spec, usage)
        return self.shared[spec, usage]


def moto_target(name: str, server: Any) -> Target:
    """A target served by moto or the emulator: AwsKms to it, boto3 to seed it."""
    client = server.client()

    def create_key(spec: str, usage: str, alias: str | None = None, tags=None) -> kms.KeyMetadata:
        tag_list = [{"TagKey": k, "TagValue": v} for k, v in (tags or {}).items()]
        meta = client.create_key(KeySpec=spec, KeyUsage=usage, Tags=tag_list)["KeyMetadata"]
        if alias:
            client.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
        return kms.KeyMetadata(meta["KeyId"], meta["Arn"], spec, usage, meta["KeyState"])

    def set_state(key_id: str, state: str) -> None:
        if state == "Disabled":
            client.disable_key(KeyId=key_id)
        elif state == "PendingDeletion":
            client.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
        else:
            raise ValueError(state)

    backend = kms.backend_for(kms.Connection(region=REGION, endpoint_url=server.endpoint_url))
    return Target(name, backend, create_key, set_state)


def unique_alias() -> str:
    """Alias names must be unique on the session-wide moto server."""
    return f"alias/t-{uuid.uuid4().hex[:12]}"


# -- a scripted KMS endpoint: answers what a test tells it to, counts what it was asked -------


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0
    request_id: str = ""


class ScriptedKms:
    """A KMS JSON endpoint on loopback. Replies are queued per operation; the last one of an
    operation repeats. An operation with no reply gets a KMSInternalException (HTTP 500)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.replies: dict[str, list[Reply]] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            self.scheme = "https"
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def endpoint_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def connection(self, **kwargs: Any) -> kms.Connection:
        kwargs.setdefault("region", REGION)
        kwargs.setdefault("max_attempts", 1)
        return kms.Connection(endpoint_url=self.endpoint_url, **kwargs)

    def reply(self, operation: str, body: dict[str, Any] | None = None, **kwargs: Any) -> None:
        with self.lock:
            self.replies.setdefault(operation, []).append(Reply(body=body or {}, **kwargs))

    def error(self, operation: str, code: str, status: int = 400, **kwargs: Any) -> None:
        body = {"__type": code, "message": f"scripted {code}"}
        self.reply(operation, body, status=status, **kwargs)

    def count(self, operation: str) -> int:
        with self.lock:
            return sum(1 for op, _ in self.requests if op == operation)

    def _next(self, operation: str, params: dict[str, Any]) -> Reply:
        with self.lock:
            self.requests.append((operation, params))
            queue = self.replies.get(operation)
            if not queue:
                return Reply(500, {"__type": "KMSInternalException", "message": "unscripted"})
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                params = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                operation = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
                reply = scripted._next(operation, params)
                time.sleep(reply.delay)
                body = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("x-amzn-RequestId", reply.request_id or str(uuid.uuid4()))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_child(pid: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("forked child hung")


def fork_while_busy(busy_call, child_ok, children: int) -> None:
    """Forks `children` times while 4 threads keep making `busy_call()`; each child must see
    `child_ok()` true and exit 0, and no thread may have failed."""
    stop, errors = threading.Event(), []

    def busy():
        while not stop.is_set():
            try:
                busy_call()
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    workers = [threading.Thread(target=busy) for _ in range(4)]
    for t in workers:
        t.start()
    try:
        for _ in range(children):
            pid = os.fork()
            if pid == 0:  # child: no test machinery from here on
                code = 1
                try:
                    code = 0 if child_ok() else 2
                finally:
                    os._exit(code)
            assert wait_child(pid) == 0
    finally:
        stop.set()
        for t in workers:
            t.join()
    assert errors == []


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def make_tls(directory: Path) -> tuple[str, ssl.SSLContext]:
    """A throwaway CA (its PEM path, for ca_bundle) and a server context for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(timezone.utc)

    def cert(subject, issuer, public, signer, ca):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("test CA", "test CA", ca_key.public_key(), ca_key, True)
    server_cert = cert("127.0.0.1", "test CA", server_key.public_key(), ca_key, False)
    pem = serialization.Encoding.PEM
    ca_path, cert_path, key_path = (directory / name for name in ("ca.pem", "cert.pem", "key.pem"))
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    cert_path.write_bytes(server_cert.public_bytes(pem))
    key_path.write_bytes(server_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return str(ca_path), context


class SilentServer:
    """Accepts TCP connections and then says nothing (`drip`: one header byte every 0.2 s)."""

    def __init__(self, drip: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.drip = drip
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []
        if drip:
            threading.Thread(target=self._serve, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not self.stopped.wait(0.2):
                conn.sendall(b"a")
        except OSError:
            pass

    def close(self) -> None:
        self.stopped.set()
        for conn in self.conns:
            conn.close()
        self.sock.close()
