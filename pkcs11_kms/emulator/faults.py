"""Fault and latency injection: settings switchable while serving, and the WSGI layer applying them.

Control path (on the emulator's own HTTP server; never faulted):
  GET    /_emulator/faults  -> {"faults": {...current settings...}, "stats": {...counters...}}
  POST   /_emulator/faults  JSON settings (replaces all; unknown fields are a 400)
  DELETE /_emulator/faults  clear every fault and release hung requests

Settings (all optional): latency_ms, jitter_ms (extra uniform 0..jitter_ms), error_code
(e.g. ThrottlingException, KMSInternalException, DependencyTimeoutException), http_status
(500/503... alone: a bare HTTP error; with error_code: that code's status), error_rate, drop_rate,
hang_rate, hang_ms (how long a hung request waits before its connection is dropped; 60000),
operations (KMS operation names such as ["Sign"]; empty: every KMS operation), max_faults (stop
injecting after this many faults), seed (for reproducible draws). error_rate defaults to 1.0 when
error_code or http_status is given. Each request draws hang, then drop, then error.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterable

CONTROL_PATH = "/_emulator/faults"

# HTTP status KMS answers each error code with (botocore's KMS model / AWS JSON protocol).
ERROR_STATUS = {
    "ThrottlingException": 400,
    "LimitExceededException": 400,
    "KMSInternalException": 500,
    "KeyUnavailableException": 500,
    "DependencyTimeoutException": 503,
    "ServiceUnavailableException": 503,
}
_REASONS = {400: "Bad Request", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass
class FaultSettings:
    """What to inject; the defaults inject nothing."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_code: str | None = None
    http_status: int | None = None
    error_rate: float = 0.0
    drop_rate: float = 0.0
    hang_rate: float = 0.0
    hang_ms: float = 60000.0
    operations: list[str] = field(default_factory=list)
    max_faults: int | None = None
    seed: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> FaultSettings:
        if not isinstance(data, dict):
            raise ValueError("fault settings must be a JSON object")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        data = {k: v for k, v in data.items() if v is not None}
        if ("error_code" in data or "http_status" in data) and "error_rate" not in data:
            data["error_rate"] = 1.0
        settings = cls(**data)
        for name in ("error_rate", "drop_rate", "hang_rate"):
            value = getattr(settings, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number from 0 to 1")
        for name in ("latency_ms", "jitter_ms", "hang_ms"):
            value = getattr(settings, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0")
        if settings.http_status is not None and not 400 <= int(settings.http_status) <= 599:
            raise ValueError("http_status must be from 400 to 599")
        if not isinstance(settings.operations, list):
            raise ValueError("operations must be a list of KMS operation names")
        return settings


def _operation(environ: dict[str, Any]) -> str | None:
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    return target.split(".", 1)[1] if target.startswith("TrentService.") else None


def _respond(start_response: Callable[..., Any], status: int, body: dict[str, Any] | str,
             content_type: str = "application/json") -> Iterable[bytes]:
    payload = (json.dumps(body) if isinstance(body, dict) else body).encode()
    start_response(f"{status} {_REASONS.get(status, 'Error')}", [
        ("Content-Type", content_type), ("Content-Length", str(len(payload))),
        ("x-amzn-RequestId", str(uuid.uuid4())),
    ])
    return [payload]


def _drop(environ: dict[str, Any]) -> None:
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    # werkzeug treats a ConnectionError from the app as a dropped connection: nothing is sent.
    raise ConnectionAbortedError("fault injection: connection dropped")


class FaultInjector:
    """WSGI middleware: serves the control path and injects faults into KMS requests."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._settings = FaultSettings()
        self._random = random.Random()
        self._release = threading.Event()
        self.stats = {"requests": 0, "delayed": 0, "errors": 0, "drops": 0, "hangs": 0,
                      "max_in_flight": 0}  # most KMS requests being served at once
        self._in_flight = 0

    @property
    def settings(self) -> FaultSettings:
        return self._settings

    def configure(self, settings: FaultSettings) -> None:
        with self._lock:
            self._settings = settings
            self._random = random.Random(settings.seed)
            self._release.set()  # hung requests from the previous settings end now
            self._release = threading.Event()
            self.stats = dict.fromkeys(self.stats, 0)

    def release_all(self) -> None:
        self._release.set()

    def _draw(self, operation: str) -> tuple[FaultSettings, float, str | None, threading.Event]:
        """Under the lock: the settings, this request's delay and its fault (or None)."""
        with self._lock:
            s, rng = self._settings, self._random
            self.stats["requests"] += 1
            if s.operations and operation not in s.operations:
                return s, 0.0, None, self._release
            delay = (s.latency_ms + (rng.uniform(0, s.jitter_ms) if s.jitter_ms else 0)) / 1000
            self.stats["delayed"] += delay > 0
            fault = None
            if s.max_faults is None or sum(self.stats[k] for k in ("errors", "drops", "hangs")) \
                    < s.max_faults:
                for name, rate in (("hangs", s.hang_rate), ("drops", s.drop_rate),
                                   ("errors", s.error_rate)):
                    if rate and rng.random() < rate:
                        fault = name
                        self.stats[name] += 1
                        break
            return s, delay, fault, self._release

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO", "").rstrip("/") == CONTROL_PATH:
            return self._control(environ, start_response)
        operation = _operation(environ)
        if operation is None:
            return self.app(environ, start_response)
        with self._lock:
            self._in_flight += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self._in_flight)
        try:
            return self._serve(environ, start_response, operation)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _serve(self, environ: dict[str, Any], start_response: Callable[..., Any],
               operation: str) -> Any:
        settings, delay, fault, release = self._draw(operation)
        if delay:
            time.sleep(delay)
        if fault == "hangs":
            release.wait(settings.hang_ms / 1000)
            _drop(environ)
        if fault == "drops":
            _drop(environ)
        if fault == "errors":
            if settings.error_code:
                status = settings.http_status or ERROR_STATUS.get(settings.error_code, 400)
                return _respond(start_response, status, {
                    "__type": settings.error_code, "message": "Injected by the KMS emulator."})
            status = settings.http_status or 500
            return _respond(start_response, status, _REASONS.get(status, "Error"), "text/plain")
        return self.app(environ, start_response)

    def _control(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "POST":
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = environ["wsgi.input"].read(length) if length else b"{}"
                self.configure(FaultSettings.from_json(json.loads(body or b"{}")))
            except (ValueError, TypeError) as exc:
                return _respond(start_response, 400, {"error": str(exc)})
        elif method == "DELETE":
            self.configure(FaultSettings())
        elif method != "GET":
            return _respond(start_response, 405, {"error": "use GET, POST or DELETE"})
        with self._lock:
            state = {"faults": asdict(self._settings), "stats": dict(self.stats)}
        return _respond(start_response, 200, state)
