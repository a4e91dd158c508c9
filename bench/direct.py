"""KMS without the module, for bench/run.py's baselines; prints one JSON object.

    python bench/direct.py latency ENDPOINT KEY_ID ALGORITHM CALLS WARM
        One process, one persistent aiobotocore client (the module's settings: same endpoint,
        retries, connection pool), WARM untimed Sign calls, then CALLS timed ones one after
        another, each of a 32-byte DIGEST: {"median_us", "p90_us"}.
    python bench/direct.py ceiling ENDPOINT KEY_ID ALGORITHM CONNECTIONS SECONDS
        The server's own ceiling: one Sign request made and signed by botocore, then sent again
        and again, raw, over CONNECTIONS keep-alive connections for SECONDS (the client costs
        ~50 us a request, so what is measured is the server): {"per_s", "ok", "errors"}.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pkcs11_kms.emulator.testing import DEFAULT_REGION, DUMMY_AWS_ENV  # noqa: E402

DIGEST = bytes(range(1, 33))


def session():
    from aiobotocore.session import get_session

    os.environ.update(DUMMY_AWS_ENV)
    return get_session()


async def latency(endpoint: str, key_id: str, algorithm: str, calls: int, warm: int) -> dict:
    from aiobotocore.config import AioConfig

    # The module's client settings (pkcs11_kms/kms/aws.py: _make_client).
    config = AioConfig(retries={"total_max_attempts": 3, "mode": "standard"},
                       max_pool_connections=128)
    async with session().create_client("kms", region_name=DEFAULT_REGION, endpoint_url=endpoint,
                                       config=config) as client:
        times = []
        for i in range(warm + calls):
            t0 = time.perf_counter()
            await client.sign(KeyId=key_id, Message=DIGEST, MessageType="DIGEST",
                              SigningAlgorithm=algorithm)
            if i >= warm:
                times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return {"median_us": statistics.median(times), "p90_us": times[len(times) * 9 // 10]}


def signed_request(endpoint: str, key_id: str, algorithm: str) -> bytes:
    """A Sign request as botocore sends it (SigV4-signed), as bytes on the wire."""
    import boto3

    captured = {}

    def keep(request, **_):
        captured["request"] = request
        return _Stop()

    class _Stop:  # botocore takes a non-None return of before-send as the response
        status_code = 200
        headers: dict = {}
        content = b"{}"
        raw = None

        @property
        def text(self):
            return "{}"

    os.environ.update(DUMMY_AWS_ENV)
    client = boto3.session.Session().client("kms", region_name=DEFAULT_REGION,
                                            endpoint_url=endpoint)
    client.meta.events.register("before-send.kms.Sign", keep)
    try:
        client.sign(KeyId=key_id, Message=DIGEST, MessageType="DIGEST",
                    SigningAlgorithm=algorithm)
    except Exception:
        pass
    request = captured["request"]
    url = urllib.parse.urlsplit(request.url)
    body = request.body if isinstance(request.body, bytes) else request.body.encode()
    headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()}
    headers["Content-Length"] = str(len(body))
    headers["Host"] = url.netloc
    head = f"POST {url.path or '/'} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


async def ceiling(endpoint: str, key_id: str, algorithm: str, connections: int,
                  seconds: float) -> dict:
    from kmsproxy import read_message

    wire = signed_request(endpoint, key_id, algorithm)
    url = urllib.parse.urlsplit(endpoint)
    counts = {"ok": 0, "errors": 0}
    deadline = 0.0

    async def one() -> None:
        stream = None
        while time.monotonic() < deadline:
            if stream is None:  # the emulator (werkzeug) closes every connection after a reply
                stream = await asyncio.open_connection(url.hostname, url.port)
            stream[1].write(wire)
            await stream[1].drain()
            message = await read_message(stream[0])
            if message is None:
                counts["errors"] += 1
            else:
                counts["ok" if message[0].startswith(b"HTTP/1.1 200") else "errors"] += 1
            if message is None or message[1].get("connection", "").lower() == "close":
                stream[1].close()
                stream = None
        if stream is not None:
            stream[1].close()

    deadline = time.monotonic() + 1.0  # warm-up: connections, the emulator's threads
    await asyncio.gather(*(one() for _ in range(connections)))
    counts = {"ok": 0, "errors": 0}
    start = time.monotonic()
    deadline = start + seconds
    await asyncio.gather(*(one() for _ in range(connections)))
    wall = time.monotonic() - start
    return {"per_s": counts["ok"] / wall, **counts}


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    what, endpoint, key_id, algorithm, a, b = sys.argv[1:7]
    if what == "latency":
        result = asyncio.run(latency(endpoint, key_id, algorithm, int(a), int(b)))
    else:
        result = asyncio.run(ceiling(endpoint, key_id, algorithm, int(a), float(b)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
