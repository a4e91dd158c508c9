"""`pkcs11-kms emulator`: the KMS emulator on 127.0.0.1 with demo keys, a config and its env."""

from __future__ import annotations

import datetime
import logging
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
TOKEN_LABEL = "emulator"


@dataclass(frozen=True)
class DemoKey:
    alias: str
    spec: str
    usage: str
    what: str


DEMO_KEYS = (
    DemoKey("alias/demo-rsa", "RSA_2048", "SIGN_VERIFY", "RSA-2048 signing key"),
    DemoKey("alias/demo-ec", "ECC_NIST_P256", "SIGN_VERIFY", "EC P-256 signing key"),
    DemoKey("alias/demo-decrypt", "RSA_3072", "ENCRYPT_DECRYPT", "RSA-3072 decryption key"),
)


def _tls_files(directory: Path) -> tuple[str, str, str]:
    """DIR/tls/{ca,server}.pem and server.key: kept while valid for another day, so that a CA
    the user already trusts stays the same across runs."""
    from cryptography import x509

    from ..emulator.tls import make_test_pki

    tls = directory / "tls"
    ca, cert, key = tls / "ca.pem", tls / "server.pem", tls / "server.key"
    if ca.is_file() and cert.is_file() and key.is_file():
        try:
            not_after = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
            left = not_after - datetime.datetime.now(datetime.timezone.utc)
            if left > datetime.timedelta(days=1):
                return str(ca), str(cert), str(key)
        except ValueError:
            pass
    return make_test_pki(tls, days=30)


def _seed(endpoint: str, region: str, ca: str | None) -> list[tuple[DemoKey, str]]:
    """Create the demo keys through the emulator's own KMS API (as any client would)."""
    import botocore.session

    session = botocore.session.Session()
    client = session.create_client(
        "kms", region_name=region, endpoint_url=endpoint, verify=ca if ca else None,
        aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    created = []
    try:
        for key in DEMO_KEYS:
            meta = client.create_key(KeySpec=key.spec, KeyUsage=key.usage,
                                     Description=f"pkcs11-kms demo: {key.what}")["KeyMetadata"]
            client.create_alias(AliasName=key.alias, TargetKeyId=meta["KeyId"])
            created.append((key, meta["KeyId"]))
    finally:
        client.close()  # no keep-alive connection left for the server to wait on at shutdown
    return created


def _config_text(endpoint: str, region: str, ca: str | None) -> str:
    lines = [
        "# Written by `pkcs11-kms emulator`: the KMS emulator's demo keys as one token.",
        "# The emulator keeps its keys in memory: they are new each time it starts.",
        f'region = "{region}"',
        f'endpoint_url = "{endpoint}"',
    ]
    if ca:
        lines.append(f'ca_bundle = "{ca}"')
    lines += ["connect_timeout = 2.0", "max_attempts = 2", "", "[[token]]",
              f'label = "{TOKEN_LABEL}"',
              "keys = [" + ", ".join(f'"{k.alias}"' for k in DEMO_KEYS) + "]", ""]
    return "\n".join(lines)


def environment(config: Path, endpoint: str, region: str, ca: str | None) -> dict[str, str]:
    """What a shell needs to use the emulator: the config, dummy credentials, no EC2 metadata."""
    env = {
        "PKCS11_KMS_CONFIG": str(config),
        **DUMMY_CREDENTIALS,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL_KMS": endpoint,  # for the AWS CLI and SDKs; the module uses the config
    }
    if ca:
        env["AWS_CA_BUNDLE"] = ca
    return env


def _env_lines(env: dict[str, str]) -> list[str]:
    return ["unset AWS_PROFILE AWS_SESSION_TOKEN"] + [
        f"export {name}={shlex.quote(value)}" for name, value in env.items()]


def run(directory: str, port: int, tls: bool, region: str) -> int:
    import importlib.util

    from ..emulator.server import make_server

    if importlib.util.find_spec("moto") is None:  # an optional dependency
        print("pkcs11-kms emulator: moto is not installed: install the emulator extra "
              "(pip install 'pkcs11-kms[emulator]')", file=sys.stderr)
        return 2
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    state = Path(directory).expanduser().absolute()
    state.mkdir(parents=True, exist_ok=True)
    ca = cert = key = None
    if tls:
        ca, cert, key = _tls_files(state)

    try:
        server, endpoint = make_server("127.0.0.1", port, cert, key)
    except (ValueError, OSError) as e:
        print(f"pkcs11-kms emulator: cannot serve on 127.0.0.1:{port}: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=server.serve_forever, name="kms-emulator", daemon=True)
    thread.start()
    try:
        try:
            created = _seed(endpoint, region, ca)
        except Exception as e:  # noqa: BLE001 - any failure here means the emulator is unusable
            print(f"pkcs11-kms emulator: cannot create the demo keys: {e}", file=sys.stderr)
            return 1
        config = state / "config.toml"
        config.write_text(_config_text(endpoint, region, ca))
        env = environment(config, endpoint, region, ca)
        env_file = state / "env.sh"
        env_file.write_text("# . this file to use the KMS emulator (pkcs11-kms emulator)\n"
                            + "\n".join(_env_lines(env)) + "\n")
        _announce(endpoint, region, created, config, env_file, env)
        while not stop.wait(0.5):
            pass
        print("# stopping the KMS emulator", file=sys.stderr, flush=True)
        return 0
    finally:
        _shutdown(server)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _announce(endpoint: str, region: str, created: list[tuple[DemoKey, str]], config: Path,
              env_file: Path, env: dict[str, str]) -> None:
    """Comments and export lines only, so that stdout can be eval'd or sourced as it is."""
    out = [f"# KMS emulator: {endpoint} (region {region}); Ctrl-C or SIGTERM stops it",
           f"# token {TOKEN_LABEL!r}:"]
    width = max(len(k.alias) for k, _ in created)
    out += [f"#   {k.alias:<{width}}  {k.spec:<13} {k.usage:<15} {key_id}" for k, key_id in created]
    out += [f"# module config: {config}",
            f"# in another shell: . {shlex.quote(str(env_file))}   (or paste these lines)"]
    out += _env_lines(env)
    out.append('# then: pkcs11-kms keys   or   pkcs11-tool --module "$(pkcs11-kms module-path)" -O')
    print("\n".join(out), flush=True)


def _shutdown(server: Any, grace: float = 5.0) -> None:
    """Stop serving and close the port; a client still holding a keep-alive connection gets
    `grace` seconds (its request thread is a daemon: it ends with the process)."""
    release = getattr(server.app, "release_all", None)
    if release is not None:
        release()  # requests hung by fault injection end, so shutdown does not wait for them

    def close() -> None:
        server.shutdown()
        server.server_close()  # closes the listening socket, then joins the request threads

    closer = threading.Thread(target=close, name="kms-emulator-stop", daemon=True)
    closer.start()
    closer.join(grace)
