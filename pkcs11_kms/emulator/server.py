"""The emulator's WSGI application and its HTTP(S) server on loopback, with the command line."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from typing import Any

from ..tools.loopback import loopback_host

ENDPOINT_PREFIX = "endpoint: "
# Test-only hook, like the faults path: GET it for a key's secret material (kms.key_material).
# Emulator only, never KMS; answered only to loopback clients (and the server binds only loopback).
KEY_MATERIAL_PATH = "/_emulator/keys/{key_id}/material"
_KEYS_PREFIX, _MATERIAL_SUFFIX = KEY_MATERIAL_PATH.split("{key_id}")


def _json(start_response: Callable[..., Any], status: str, body: dict[str, Any]) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(payload)))])
    return [payload]


def _serve_key_material(environ: dict[str, Any], start_response: Callable[..., Any],
                        key_id: str) -> list[bytes]:
    try:
        local = ipaddress.ip_address(environ.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        local = False
    if not local:
        return _json(start_response, "403 Forbidden", {"error": "loopback clients only"})
    if environ.get("REQUEST_METHOD", "GET") != "GET":
        return _json(start_response, "405 Method Not Allowed", {"error": "use GET"})
    from .kms import key_material

    material = key_material(key_id) if key_id and "/" not in key_id else None
    if material is None:
        return _json(start_response, "404 Not Found", {"error": f"no key {key_id!r}"})
    return _json(start_response, "200 OK", material)


def build_app() -> Callable[..., Any]:
    """KMS requests to the emulator's KMS, anything else to plain moto, behind fault injection."""
    import moto
    from flask import Flask
    from moto.core.utils import convert_to_flask_response
    from moto.moto_server.werkzeug_app import (
        BackendRequest,
        DomainDispatcherApplication,
        create_backend_app,
    )

    from . import kms
    from .faults import FaultInjector

    if moto.__version__ != kms.MOTO_VERSION:
        print(f"warning: the KMS emulator is written against moto {kms.MOTO_VERSION}, "
              f"found {moto.__version__}; run tests/emulator", file=sys.stderr)
    kms.install()
    kms_app = Flask("pkcs11_kms.emulator")
    kms_app.request_class = BackendRequest
    kms_app.add_url_rule("/", endpoint="kms", methods=["POST"], strict_slashes=False,
                         view_func=convert_to_flask_response(kms.EmulatorKmsResponse.dispatch))
    others = DomainDispatcherApplication(create_backend_app)

    def dispatch(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("TrentService."):
            return kms_app(environ, start_response)
        path = environ.get("PATH_INFO", "")
        if path.startswith(_KEYS_PREFIX) and path.endswith(_MATERIAL_SUFFIX):
            key_id = path[len(_KEYS_PREFIX):len(path) - len(_MATERIAL_SUFFIX)]
            return _serve_key_material(environ, start_response, key_id)
        return others(environ, start_response)

    return FaultInjector(dispatch)


class _LazyHandshake(ssl.SSLContext):
    """TLS whose handshake runs in the request thread, so a silent client cannot block accept()."""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def make_server(host: str = "127.0.0.1", port: int = 0, tls_cert: str | None = None,
                tls_key: str | None = None) -> tuple[Any, str]:
    """A bound, not yet serving, threaded server and its endpoint URL."""
    try:
        host = loopback_host(host)
    except ValueError:
        raise ValueError(f"refusing to serve on {host!r}: the emulator binds only loopback "
                         "addresses") from None
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("HTTPS needs both --tls-cert and --tls-key")
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server as werkzeug_server

    context = None
    if tls_cert:
        context = _LazyHandshake(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls_cert, tls_key)
    server = werkzeug_server(host, port, build_app(), threaded=True,
                             request_handler=MotoRequestHandler, ssl_context=context)
    shown = f"[{host}]" if ":" in host else host
    return server, f"{'https' if context else 'http'}://{shown}:{server.server_port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pkcs11_kms.emulator",
        description="AWS KMS emulator (moto with KMS's asymmetric semantics) on loopback.")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (0)")
    parser.add_argument("--tls-cert", help="PEM certificate (chain) to serve HTTPS with")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--log-requests", action="store_true", help="log each request to stderr")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.log_requests else logging.WARNING)
    try:
        server, endpoint = make_server(args.host, args.port, args.tls_cert, args.tls_key)
    except (ValueError, OSError, ssl.SSLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="kms-emulator", daemon=True)
    thread.start()
    print(f"{ENDPOINT_PREFIX}{endpoint}", flush=True)
    while not stop.wait(0.5):
        pass
    server.app.release_all()  # hung requests end so shutdown does not wait for them
    server.shutdown()
    server.server_close()
    return 0
