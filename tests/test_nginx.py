"""nginx with a KMS key (docs/design.md, "nginx"): fork, workers as nobody, a cleared environment.

The example files users copy, conf/nginx-kms.conf and conf/nginx-openssl.conf, are rendered for a
throwaway prefix (loopback, a free port, temporary paths) and run as they are: the master loads the
key through libp11's engine, forks 4 workers that run as nobody, and the workers sign every TLS
handshake with KMS (the emulator over HTTPS, as real KMS). 200 fresh connections per key, TLS 1.2
and 1.3, each checked by Python's TLS client against the certificate.

nginx needs root here (it switches workers to nobody). The files the workers read live in a
world-readable directory, as the docs ask. Every tool is required: a missing one fails the test.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hosts import free_port, run, tool
from keyseed import REGION, key_entries, seed_key

CONF = Path(__file__).resolve().parent.parent / "conf"
ENGINE = Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so")
TOKEN = "nginx"
REQUESTS = 200
WORKERS = 4
NOBODY = 65534
# Signals an nginx master waits for in sigsuspend(); a thread of the module must not take them.
MASTER_SIGNALS = (signal.SIGCHLD, signal.SIGALRM, signal.SIGIO, signal.SIGHUP, signal.SIGTERM,
                  signal.SIGQUIT, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
# libp11 0.4.12 (Debian 12) registers its RSA and EC methods when loaded, so nginx's
# `ssl_engine pkcs11;` (ENGINE_set_default) initialises it; 0.4.13 (Debian 13) registers none
# before it is initialised, so there only `init = 1` works (as without ssl_engine, see
# test_uninitialised_engine_is_refused_by_nginx).
SSL_ENGINE_INITIALISES = "bookworm" in Path("/etc/os-release").read_text()
EC_HOW, EC_ID = (("ssl_engine", "ec-ssl_engine") if SSL_ENGINE_INITIALISES
                 else ("init", "ec-engine-init"))


def render(text: str, replacements: dict[str, str]) -> str:
    """The example with its site-specific lines replaced; each must be there exactly once, so the
    test breaks when the example changes under it."""
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{old!r} is not in the example exactly once"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def site(https_kms_server, module_path):
    """A world-readable folder with the module's config, the KMS CA bundle, certificates made by
    the token keys, and OPENSSL_CONF for nginx. Returns (folder, env for nginx, keys)."""
    assert ENGINE.is_file(), f"{ENGINE} missing: install libengine-pkcs11-openssl"
    folder = Path(tempfile.mkdtemp(prefix="pkcs11-kms-nginx-"))
    try:
        folder.chmod(0o755)
        client = https_kms_server.client()
        keys = {"rsa": seed_key(client, None, "RSA_2048", "SIGN_VERIFY"),
                "ec": seed_key(client, None, "ECC_NIST_P256", "SIGN_VERIFY")}
        shutil.copy(https_kms_server.ca_bundle, folder / "kms-ca.pem")
        entries = key_entries(keys)
        config = folder / "config.toml"
        config.write_text(
            f'region = "{REGION}"\nendpoint_url = "{https_kms_server.endpoint_url}"\n'
            f'ca_bundle = "kms-ca.pem"\n[[token]]\nlabel = "{TOKEN}"\nkeys = [{entries}]\n')
        openssl_text = render((CONF / "nginx-openssl.conf").read_text(), {
            "MODULE_PATH = /opt/pkcs11-kms/lib/python3.11/site-packages/pkcs11_kms/"
            "libkms-pkcs11.so": f"MODULE_PATH = {module_path}",
        }) + "\n[req]\ndistinguished_name = req_dn\n[req_dn]\n"
        openssl_conf = folder / "openssl.cnf"
        openssl_conf.write_text(openssl_text)
        # The other way: the engine loaded but not initialised, for `ssl_engine pkcs11;`.
        (folder / "openssl-init0.cnf").write_text(
            render(openssl_text, {"\ninit = 1\n": "\ninit = 0\n"}))
        env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"}
        env.update(PKCS11_KMS_CONFIG=str(config), OPENSSL_CONF=str(openssl_conf))
        for label in keys:
            proc = run([tool("openssl"), "req", "-new", "-x509", "-engine", "pkcs11",
                        "-keyform", "engine",
                        "-key", f"pkcs11:token={TOKEN};object={label};type=private",
                        "-subj", f"/CN=localhost {label}", "-days", "30", "-sha256",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-addext", "extendedKeyUsage=serverAuth",
                        "-out", str(folder / f"{label}.pem")], env)
            assert proc.returncode == 0, proc.stderr
        for path in folder.iterdir():
            path.chmod(0o644)
        yield folder, env, keys
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def nginx_conf(folder: Path, name: str, label: str, port: int, top: str = "") -> str:
    prefix = folder / name
    (prefix / "logs").mkdir(parents=True)
    return render((CONF / "nginx-kms.conf").read_text(), {
        "pid /run/nginx-kms.pid;": f"pid {prefix}/nginx.pid;\ndaemon off;\n{top}",
        "error_log /var/log/nginx/kms-error.log notice;":
            f"error_log {prefix}/logs/error.log notice;",
        "access_log /var/log/nginx/kms-access.log;":
            f"access_log {prefix}/logs/access.log;\n"
            + "".join(f"    {kind}_temp_path {prefix}/{kind};\n"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
        # The example keeps the credential variables; tests also never reach the metadata service.
        "env AWS_REGION;":
            "env AWS_REGION;\nenv AWS_DEFAULT_REGION;\nenv AWS_EC2_METADATA_DISABLED;",
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "ssl_certificate /etc/pkcs11-kms/web.pem;": f"ssl_certificate {folder}/{label}.pem;",
        "token=web;object=web-tls;": f"token={TOKEN};object={label};",
        "root /var/www/html;": 'return 200 "$pid\\n";',
    })


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = log.parent / "stderr.log"  # where nginx reports a failed start
            shown = log.read_text() if log.exists() else stderr.read_text()
            raise AssertionError(f"nginx exited with {process.returncode}: {shown}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nginx does not listen on {port}: {log.read_text()}")


@pytest.fixture(scope="module", params=[("rsa", "init"), ("ec", EC_HOW)],
                ids=["rsa-engine-init", EC_ID])
def nginx(request, site, module_path):
    """nginx (master + 4 workers as nobody) serving HTTPS with the token's `label` key, the
    engine initialised by OPENSSL_CONF (`init = 1`) or by nginx's `ssl_engine pkcs11;`.
    Yields (label, port, certificate PEM path, prefix, master pid)."""
    assert os.geteuid() == 0, "nginx needs root to start workers as nobody; CI runs this as root"
    for path in (Path(module_path), Path(sys.prefix)):  # the workers load the module as nobody
        closed = [p for p in path.resolve().parents if not p.stat().st_mode & 0o001]
        assert not closed, (f"{closed[0]} is closed to other users: nginx's workers (nobody) "
                            f"cannot read {path} (a checkout under /root, for example)")
    folder, env, _keys = site
    label, how = request.param
    port = free_port()
    conf = folder / f"nginx-{label}.conf"
    if how == "ssl_engine":
        env = dict(env, OPENSSL_CONF=str(folder / "openssl-init0.cnf"))
        conf.write_text(nginx_conf(folder, f"nginx-{label}", label, port, "ssl_engine pkcs11;\n"))
    else:
        conf.write_text(nginx_conf(folder, f"nginx-{label}", label, port))
    prefix = folder / f"nginx-{label}"
    stderr_log = prefix / "logs" / "stderr.log"
    process = None
    try:
        with open(stderr_log, "w") as out:
            process = subprocess.Popen(
                [tool("nginx"), "-p", str(prefix), "-c", str(conf), "-e", str(stderr_log)],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)  # its own process group: the workers go with it
        wait_for_port(port, process, prefix / "logs" / "error.log")
        yield label, port, folder / f"{label}.pem", prefix, process.pid
    finally:
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(process.pid, signal.SIGKILL)  # a worker or a hung master left over
            except ProcessLookupError:
                pass
            if process.poll() is None:
                process.wait(timeout=10)


def fetch(port: int, certificate: Path, i: int) -> tuple[int, str, str, bytes]:
    """One request on a fresh TLS connection (a full handshake: one KMS signature), TLS 1.2 on
    odd requests and 1.3 on even ones. Python's ssl verifies the handshake signature against the
    certificate, whose SAN names 127.0.0.1."""
    context = ssl.create_default_context(cafile=str(certificate))
    version = ssl.TLSVersion.TLSv1_2 if i % 2 else ssl.TLSVersion.TLSv1_3
    context.minimum_version = context.maximum_version = version
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
    try:
        connection.connect()
        tls = connection.sock
        assert isinstance(tls, ssl.SSLSocket)
        version, peer = tls.version(), tls.getpeercert(binary_form=True)
        connection.request("GET", f"/{i}", headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, response.read().decode(), version, peer
    finally:
        connection.close()


def test_serves_https_from_forked_workers(nginx):
    _label, port, certificate, prefix, _master = nginx
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: fetch(port, certificate, i), range(REQUESTS)))
    assert [status for status, *_ in results] == [200] * REQUESTS
    expected = ssl.PEM_cert_to_DER_cert(certificate.read_text())
    assert {peer for *_, peer in results} == {expected}
    assert {version for _, _, version, _ in results} == {"TLSv1.2", "TLSv1.3"}
    workers = {int(body) for _, body, _, _ in results}
    assert len(workers) >= 2, f"one worker served everything: {workers}"
    for pid in workers:  # the signing processes are forked workers running as nobody
        status = Path(f"/proc/{pid}/status").read_text()
        uid_line = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
        assert uid_line and int(uid_line[1]) == NOBODY, f"worker {pid} does not run as nobody"
    log = (prefix / "logs" / "error.log").read_text()
    assert not re.search(r"\[(emerg|alert|crit|error)\]", log), log
    stderr = (prefix / "logs" / "stderr.log").read_text()
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr


def test_module_threads_in_master_block_signals(nginx):
    _label, port, certificate, _prefix, master = nginx
    assert fetch(port, certificate, 0)[0] == 200
    # Every thread of the master but its own: the module's (the KMS loop; none when the master's
    # KMS calls all ran on its own thread, as in pkcs11-provider's early load on OpenSSL 3.5).
    tasks = sorted(int(t) for t in os.listdir(f"/proc/{master}/task"))
    for tid in tasks:
        if tid == master:
            continue
        status = Path(f"/proc/{master}/task/{tid}/status").read_text()
        blocked = int(re.search(r"^SigBlk:\s+([0-9a-f]+)$", status, re.MULTILINE)[1], 16)
        open_signals = [s.name for s in MASTER_SIGNALS if not blocked & (1 << (s - 1))]
        assert not open_signals, f"thread {tid} of the nginx master takes {open_signals}"


def test_uninitialised_engine_is_refused_by_nginx(site):
    """Neither `init = 1` nor `ssl_engine`: nginx's "engine:" keys need an initialised engine
    (nginx calls ENGINE_load_private_key without ENGINE_init) - a rule of nginx, not the module."""
    folder, env, _keys = site
    conf = folder / "nginx-uninitialised.conf"
    conf.write_text(nginx_conf(folder, "nginx-uninitialised", "rsa", free_port()))
    proc = run([tool("nginx"), "-t", "-p", str(folder / "nginx-uninitialised"), "-c", str(conf),
                "-e", str(folder / "nginx-uninitialised" / "logs" / "stderr.log")],
               dict(env, OPENSSL_CONF=str(folder / "openssl-init0.cnf")))
    assert proc.returncode != 0
    assert ("ENGINE_load_private_key() failed (SSL: error:13000075:engine routines::not "
            "initialised)") in proc.stderr, proc.stderr
