"""A latency-injecting HTTP proxy in front of the KMS emulator, for bench/run.py.

Listens on 127.0.0.1 and, for every KMS request (a POST with an X-Amz-Target header), waits a
fixed delay (asyncio.sleep: requests are delayed side by side, never one after another), then
forwards it to the upstream emulator on a keep-alive connection of its own (one per client
connection) and relays the answer. Other paths (the emulator's /_emulator/...) pass undelayed.

With --sign-locally the proxy answers `Sign` itself, after the delay, as KMS would (key ARN,
DER/PKCS#1 signature, algorithm): the key's private material comes once per key from the
emulator's test-only endpoint (/_emulator/keys/ID/material) and `cryptography` signs. This lifts
the emulator's own ceiling (moto signs a few hundred per second on this machine) out of the
concurrency figures: what remains is the module, the host and the machine. Every other operation
still goes to the emulator.

    python bench/kmsproxy.py --upstream http://127.0.0.1:PORT [--delay-ms 20] [--sign-locally]

Prints `proxy: http://127.0.0.1:PORT` (flushed) once listening; serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import sys
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pkcs11_kms.emulator.testing import key_material  # noqa: E402

MAX_HEAD = 64 * 1024


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes] | None:
    """One HTTP/1.1 message: (start line + headers as bytes, lower-case headers, body); None at
    EOF before a message starts."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(chunk[:-2])
        body = b"".join(chunks)
        # re-frame with a length: the client gets a plain Content-Length message
        lines = [x for x in head[:-4].split(b"\r\n")
                 if not x.lower().startswith(b"transfer-encoding:")]
        head = b"\r\n".join(lines + [f"Content-Length: {len(body)}".encode()]) + b"\r\n\r\n"
    elif head.startswith(b"HTTP/"):
        body = await reader.read()  # no length: until the server closes
    else:
        body = b""
    return head, headers, body


class LocalSigner:
    """KMS's Sign from the emulator's key material (fetched once per key)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.keys: dict[str, Any] = {}

    async def material(self, key_id: str) -> tuple[Any, Any]:
        """(KeyMaterial, its private key): loading an RSA key checks it, ~40 ms: once."""
        if key_id not in self.keys:
            material = await asyncio.get_running_loop().run_in_executor(
                None, key_material, self.upstream, key_id)
            self.keys[key_id] = (material, material.private_key())
        return self.keys[key_id]

    async def sign(self, body: bytes) -> tuple[int, bytes]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

        request = json.loads(body)
        material, private = await self.material(request["KeyId"])
        algorithm = request["SigningAlgorithm"]
        message = base64.b64decode(request["Message"])
        digest = {"256": hashes.SHA256(), "384": hashes.SHA384(),
                  "512": hashes.SHA512()}[algorithm.rsplit("_", 1)[-1]]
        chosen = utils.Prehashed(digest) if request.get("MessageType") == "DIGEST" else digest
        if isinstance(private, ec.EllipticCurvePrivateKey):
            signature = private.sign(message, ec.ECDSA(chosen))
        elif isinstance(private, rsa.RSAPrivateKey):
            pad = (padding.PSS(padding.MGF1(digest), digest.digest_size)
                   if algorithm.startswith("RSASSA_PSS") else padding.PKCS1v15())
            signature = private.sign(message, pad, chosen)
        else:
            raise ValueError(f"{material.key_spec}: not signed locally")
        return 200, json.dumps({"KeyId": material.key_arn, "SigningAlgorithm": algorithm,
                                "Signature": base64.b64encode(signature).decode()}).encode()


class Proxy:
    def __init__(self, upstream: str, delay_ms: float, sign_locally: bool) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.delay = delay_ms / 1000
        self.signer = LocalSigner(upstream) if sign_locally else None
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                message = await read_message(reader)
                if message is None:
                    break
                head, headers, body = message
                target = headers.get("x-amz-target", "")
                if target:
                    self.requests += 1
                    if self.delay:
                        await asyncio.sleep(self.delay)
                if self.signer is not None and target == "TrentService.Sign":
                    status, answer = await self.signer.sign(body)
                    writer.write(
                        f"HTTP/1.1 {status} OK\r\nContent-Type: application/x-amz-json-1.1\r\n"
                        f"Content-Length: {len(answer)}\r\nx-amzn-RequestId: {uuid.uuid4()}\r\n"
                        "\r\n".encode() + answer)
                    await writer.drain()
                    continue
                for attempt in (0, 1):  # a kept-alive upstream connection may have closed
                    if up is None:
                        up = await asyncio.open_connection(self.host, self.port)
                    try:
                        up[1].write(head + body)
                        await up[1].drain()
                        response = await read_message(up[0])
                        if response is None:
                            raise ConnectionResetError("upstream closed")
                        break
                    except (ConnectionError, asyncio.IncompleteReadError):
                        up[1].close()
                        up = None
                        if attempt:
                            raise
                rhead, rheaders, rbody = response
                # The emulator (werkzeug) closes after every reply; KMS keeps connections open:
                # so does the proxy towards its clients, whatever the upstream does.
                rhead = rhead.replace(b"\r\nConnection: close\r\n", b"\r\n")
                writer.write(rhead + rbody)
                await writer.drain()
                if rheaders.get("connection", "").lower() == "close" or \
                        rhead.startswith(b"HTTP/1.0"):
                    up[1].close()
                    up = None
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the proxy is stopping
        finally:
            writer.close()
            if up is not None:
                up[1].close()


async def serve(args: argparse.Namespace) -> None:
    proxy = Proxy(args.upstream, args.delay_ms, args.sign_locally)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", args.port, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"proxy: http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="the emulator's http:// endpoint")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--sign-locally", action="store_true", help="answer Sign in the proxy")
    asyncio.run(serve(ap.parse_args()))


if __name__ == "__main__":
    main()
