"""EmulatorProcess: run the emulator in a subprocess for tests and demos, switch its faults, and
(test-only) read a key's secret material to check KMS's results independently."""

from __future__ import annotations

import base64
import json
import os
import queue
import ssl
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .faults import CONTROL_PATH
from .server import ENDPOINT_PREFIX, KEY_MATERIAL_PATH

DEFAULT_REGION = "eu-west-1"
# Never real credentials, never the EC2 metadata service (docs/design.md, "The emulator").
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": DEFAULT_REGION,
    "AWS_REGION": DEFAULT_REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}
_DROPPED_ENV = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS", "AWS_CA_BUNDLE")


def _open(endpoint_url: str, path: str, method: str = "GET", body: dict[str, Any] | None = None,
          ca_bundle: str | None = None) -> dict[str, Any]:
    """One JSON request to the emulator's own (non-KMS) paths; no proxy, the CA trusted."""
    handlers: list[Any] = [urllib.request.ProxyHandler({})]
    if endpoint_url.startswith("https"):
        context = ssl.create_default_context(cafile=ca_bundle)
        handlers.append(urllib.request.HTTPSHandler(context=context))
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(endpoint_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(*handlers).open(request, timeout=10) as response:
        return json.loads(response.read())


@dataclass(frozen=True)
class KeyMaterial:
    """A key's secret material as the emulator reveals it to tests (never available from KMS).

    ``format`` is "RAW" (``material`` is the secret key itself: HMAC and SYMMETRIC_DEFAULT keys)
    or "PKCS8" (``material`` is the unencrypted DER private key of an asymmetric key)."""

    key_arn: str
    key_spec: str
    key_usage: str
    format: str
    material: bytes

    def private_key(self) -> Any:
        """The asymmetric private key as a cryptography object."""
        from cryptography.hazmat.primitives import serialization

        if self.format != "PKCS8":
            raise ValueError(f"{self.key_spec} keys have no private key")
        return serialization.load_der_private_key(self.material, password=None)


def key_material(endpoint_url: str, key_id: str, ca_bundle: str | None = None) -> KeyMaterial:
    """TEST ONLY: the secret material of ``key_id`` (a key ID or key ARN) from a running emulator
    at ``endpoint_url`` (GET server.KEY_MATERIAL_PATH). Real KMS has no such thing; an unknown key
    raises urllib.error.HTTPError 404."""
    bare = key_id.rsplit(":key/", 1)[-1]
    data = _open(endpoint_url, KEY_MATERIAL_PATH.format(key_id=urllib.parse.quote(bare, safe="")),
                 ca_bundle=ca_bundle)
    return KeyMaterial(data["KeyId"], data["KeySpec"], data["KeyUsage"], data["Format"],
                       base64.b64decode(data["KeyMaterial"]))


class EmulatorProcess:
    """``python -m pkcs11_kms.emulator`` in a subprocess on a free loopback port.

    Use as a context manager or call start()/stop(). ``endpoint_url`` and ``process`` are set
    once started. With ``tls_cert``/``tls_key`` it serves HTTPS; ``ca_bundle`` (default: the
    certificate itself) is what clients trust.
    """

    def __init__(self, tls_cert: str | None = None, tls_key: str | None = None,
                 ca_bundle: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 startup_timeout: float = 30.0) -> None:
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self.ca_bundle = ca_bundle or tls_cert
        self.host, self.port, self.startup_timeout = host, port, startup_timeout
        self.endpoint_url: str | None = None
        self.process: subprocess.Popen[str] | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "pkcs11_kms.emulator", "--host", self.host,
               "--port", str(self.port)]
        if self.tls_cert:
            cmd += ["--tls-cert", str(self.tls_cert), "--tls-key", str(self.tls_key)]
        return cmd

    @staticmethod
    def environment() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        env.update(DUMMY_AWS_ENV)
        root = str(Path(__file__).resolve().parents[2])  # the directory holding pkcs11_kms/
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        return env

    def start(self) -> EmulatorProcess:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the emulator is already running")
        self.endpoint_url = None
        self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, text=True,
                                        env=self.environment(), stdin=subprocess.DEVNULL)
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.process.stdout
        assert stdout is not None

        def pump() -> None:  # keep reading so the child can never block on a full pipe
            for line in stdout:
                lines.put(line)
            lines.put("")

        threading.Thread(target=pump, name="kms-emulator-stdout", daemon=True).start()
        try:
            first = lines.get(timeout=self.startup_timeout)
        except queue.Empty:
            first = ""
        if not first.startswith(ENDPOINT_PREFIX):
            status = self.stop()
            raise RuntimeError(f"the KMS emulator did not start (first line {first!r}, "
                               f"exit status {status})")
        self.endpoint_url = first[len(ENDPOINT_PREFIX):].strip()
        return self

    def stop(self) -> int | None:
        """Terminate the server (SIGTERM, then SIGKILL after 10 s); return its exit status.

        ``process`` stays set, so its ``returncode`` can be inspected; stopping twice is fine."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, region: str = DEFAULT_REGION, ca_bundle: str | None = None,
               config: Any = None) -> Any:
        """A boto3 KMS client for this emulator, with dummy credentials and the CA trusted."""
        import boto3

        if self.endpoint_url is None:
            raise RuntimeError("the emulator is not started")
        session = boto3.session.Session(
            aws_access_key_id=DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=DUMMY_AWS_ENV["AWS_SESSION_TOKEN"], region_name=region)
        verify = (ca_bundle or self.ca_bundle) if self.endpoint_url.startswith("https") else None
        return session.client("kms", endpoint_url=self.endpoint_url, verify=verify,
                              config=config)

    # -- fault injection on the running server (see pkcs11_kms.emulator.faults) --

    def _control(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.endpoint_url is None:
            raise RuntimeError("the emulator is not started")
        return _open(self.endpoint_url, CONTROL_PATH, method, body, self.ca_bundle)

    def set_faults(self, settings: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Replace the fault settings, e.g. set_faults(error_code="ThrottlingException",
        error_rate=0.5, operations=["Sign"]); returns the server's view of them."""
        return self._control("POST", {**(settings or {}), **kwargs})

    def clear_faults(self) -> dict[str, Any]:
        """Inject nothing from now on, and release hung requests."""
        return self._control("DELETE")

    def faults(self) -> dict[str, Any]:
        """{"faults": current settings, "stats": counters since they were set}."""
        return self._control("GET")

    # -- test-only: key material (see key_material above) --

    def key_material(self, key_id: str) -> KeyMaterial:
        """TEST ONLY: the secret material of ``key_id`` (key ID or ARN) in this emulator."""
        if self.endpoint_url is None:
            raise RuntimeError("the emulator is not started")
        return key_material(self.endpoint_url, key_id, self.ca_bundle)
