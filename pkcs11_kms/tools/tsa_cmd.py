"""`pkcs11-kms tsa`: RFC 3161 replies signed by a PKCS#11 key, one query or an HTTP server."""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from asn1crypto import algos, pem, x509
from pkcs11 import KeyType, Mechanism, PKCS11Error

from .loopback import loopback_host
from .p11client import Pkcs11Module, describe
from .tsa import (
    DEFAULT_POLICY,
    Signer,
    TimeStampAuthority,
    check_certificate,
    default_digest,
    rejection,
    verify_signature,
)
from .uri import parse_uri

RSA_PKCS_WITH = {"sha256": Mechanism.SHA256_RSA_PKCS, "sha384": Mechanism.SHA384_RSA_PKCS,
                 "sha512": Mechanism.SHA512_RSA_PKCS}
QUERY_TYPE, REPLY_TYPE = "application/timestamp-query", "application/timestamp-reply"
MAX_QUERY = 64 * 1024


class Failed(Exception):
    """A problem to report in one line and exit with status 1 (2: a usage problem)."""

    def __init__(self, text: str, status: int = 1) -> None:
        super().__init__(text)
        self.status = status


def _say(text: str) -> None:
    print(f"pkcs11-kms tsa: {text}", file=sys.stderr, flush=True)


def read_certificates(path: str) -> list[x509.Certificate]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Failed(f"cannot read {path}: {e.strerror}", 2) from None
    blobs = [der for _, _, der in pem.unarmor(data, multiple=True)] if pem.detect(data) else [data]
    try:
        certs = [x509.Certificate.load(der) for der in blobs]
        for cert in certs:
            cert.native  # noqa: B018 - parse fully now
    except ValueError as e:
        raise Failed(f"{path} is not an X.509 certificate: {e}", 2) from None
    if not certs:
        raise Failed(f"{path} holds no certificate", 2)
    return certs


def make_signer(module: Pkcs11Module, uri_text: str, cert: x509.Certificate,
                digest: str | None) -> tuple[Signer, str]:
    """A Signer on the key the URI names; refuses a certificate that is not the key's."""
    try:
        uri = parse_uri(uri_text)
        key = module.find_key(uri)
    except (ValueError, LookupError) as e:
        raise Failed(f"--key: {e}", 2) from None
    if key.spki is not None and _public_bits(key.spki) != bytes(cert.public_key["public_key"]):
        raise Failed(f"--cert is not the certificate of {key.token_label}/{key.label}: its public "
                     "key differs", 2)
    digest = digest or default_digest(cert.public_key)
    if not key.can_sign:
        raise Failed(f"{key.token_label}/{key.label} may not sign: its CKA_SIGN is false")
    if key.key_type == KeyType.RSA:
        def sign(data: bytes, name: str) -> bytes:
            return module.sign(key, RSA_PKCS_WITH[name], data)
        kind = "rsa"
    elif key.key_type == KeyType.EC:
        def sign(data: bytes, name: str) -> bytes:
            raw = module.sign(key, Mechanism.ECDSA, hashlib.new(name, data).digest())
            return algos.DSASignature.from_p1363(raw).dump()
        kind = "ec"
    else:
        raise Failed(f"{key.token_label}/{key.label} is neither an RSA nor an EC key", 2)

    def checked(data: bytes, name: str) -> bytes:
        signature = sign(data, name)
        if not verify_signature(cert, signature, data, name):
            raise Failed("the token's signature does not verify with --cert's public key: is "
                         "--cert the certificate of --key?")
        return signature

    return Signer(kind, digest, checked), f"{key.token_label}/{key.label}"


def _public_bits(spki: bytes) -> bytes:
    from asn1crypto import keys

    return bytes(keys.PublicKeyInfo.load(spki)["public_key"])


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except Failed as e:
        _say(str(e))
        return e.status
    except PKCS11Error as e:
        _say(f"PKCS#11: {describe(e)}")
        return 1


def _run(args: argparse.Namespace) -> int:
    from .. import module_path

    certs = read_certificates(args.cert)
    cert = certs[0]
    problems = check_certificate(cert)
    if problems:
        raise Failed(f"{args.cert} cannot sign time-stamps: {'; '.join(problems)}. Issue it with "
                     "extendedKeyUsage = critical, timeStamping", 2)
    chain = [c for path in args.chain for c in read_certificates(path)] + certs[1:]
    config = None
    if args.config:
        if not os.path.isfile(args.config):
            raise Failed(f"--config {args.config}: no such file", 2)
        config = os.path.abspath(args.config)
    try:
        uri_module = parse_uri(args.key).query.get("module-path")
    except ValueError as e:
        raise Failed(f"--key: {e}", 2) from None
    library = args.module or uri_module or str(module_path())
    try:
        module = Pkcs11Module(library, config)
    except OSError as e:
        raise Failed(f"cannot load {library}: {e}", 2) from None
    try:
        signer, name = make_signer(module, args.key, cert, args.digest)
        authority = TimeStampAuthority(signer, cert, chain, args.policy or DEFAULT_POLICY)
        if args.serve:
            return serve(authority, name, args.host, args.port)
        return one_shot(authority, args.input, args.output)
    finally:
        module.close()


def one_shot(authority: TimeStampAuthority, source: str, target: str) -> int:
    try:
        if source == "-":
            query = sys.stdin.buffer.read()
        else:
            with open(source, "rb") as f:
                query = f.read()
    except OSError as e:
        raise Failed(f"cannot read {source}: {e.strerror}", 2) from None
    reply, line = authority.respond(query)
    try:
        if target == "-":
            sys.stdout.buffer.write(reply)
            sys.stdout.buffer.flush()
        else:
            with open(target, "wb") as f:
                f.write(reply)
    except OSError as e:
        raise Failed(f"cannot write {target}: {e.strerror}", 2) from None
    _say(line)
    return 0 if line.startswith("granted") else 1


def loopback(host: str) -> str:
    """Only loopback addresses: remote clients reach the TSA through a proxy the user runs (TLS,
    access control), never through a socket this command opens to the network."""
    try:
        return loopback_host(host)
    except ValueError:
        raise Failed(f"--host {host}: the TSA listens on loopback addresses only (put a reverse "
                     "proxy in front of it for other clients)", 2) from None


def serve(authority: TimeStampAuthority, name: str, host: str, port: int) -> int:
    """RFC 3161 section 3.4 over HTTP: POST a query, get a reply, until SIGTERM or Ctrl-C."""
    host = loopback(host)

    class Handler(BaseHTTPRequestHandler):
        server_version = "pkcs11-kms-tsa"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self._log_line = ""
            content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type != QUERY_TYPE:
                return self._plain(415, f"send {QUERY_TYPE}\n")
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._plain(411, "Content-Length required\n")
            if not 0 < length <= MAX_QUERY:
                return self._plain(413, "query too large\n")
            query = self.rfile.read(length)
            try:
                reply, line = authority.respond(query)
            except Exception as e:  # noqa: BLE001 - the signer failed: say so, keep serving
                _say(f"signing failed: {e}")
                reply, line = rejection("system_failure", "the TSA could not sign"), "failed"
            self._log_line = line
            self.send_response(200)
            self.send_header("Content-Type", REPLY_TYPE)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def do_GET(self) -> None:  # noqa: N802
            self._plain(405, f"POST an RFC 3161 query ({QUERY_TYPE})\n", {"Allow": "POST"})

        def _plain(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
            body = text.encode()
            self.send_response(status)
            for k, v in {"Content-Type": "text/plain", **(headers or {})}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            line = getattr(self, "_log_line", "")
            _say(f'{self.client_address[0]} "{self.requestline}" {code}'
                 f"{': ' + line if line else ''}")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            _say(f"{self.client_address[0]} {format % args}")

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        raise Failed(f"cannot listen on {host}:{port}: {e.strerror}") from None
    server.daemon_threads = True
    server.block_on_close = False  # a slow client must not hold up Ctrl-C
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=server.serve_forever, name="tsa", daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    print(f"serving RFC 3161 time-stamps on http://{shown}:{server.server_port}/ "
          f"with {name} (Ctrl-C stops)", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
