"""A privileged host ignores the environment that could redirect the module (docs/security.md,
"Privileged hosts").

tests/harness/secure_host.c is installed setuid root and run as nobody: the kernel marks the
process AT_SECURE, as for sudo or any setuid program. Its environment plants a config
(PKCS11_KMS_CONFIG, XDG_CONFIG_HOME), a log level (PKCS11_KMS_LOG), an endpoint (AWS_ENDPOINT_URL)
and a CA bundle (AWS_CA_BUNDLE); the module must use only /etc/pkcs11-kms/config.toml. The same
host without the setuid bit, as nobody with the same environment, uses each of them: so the
planted values work, and a module that stopped ignoring them would fail here. The same for the
variables that tell botocore's credential providers where to fetch credentials (a container
credentials URL and its token, a web identity token file and role): a local server records
what the unprivileged run fetches, and sees nothing from the privileged one.

/etc/pkcs11-kms/config.toml is written in a private mount namespace (an overlay over /etc), where
/etc/hosts also sends the AWS endpoint of the region to 127.0.0.1: the privileged runs never
reach AWS. Needs root (CI runs the tests as root).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hosts import build_c_host, run, tool
from keyseed import REGION, seed_key

NOBODY = 65534
# Runs "$@" as nobody, with /etc/pkcs11-kms/config.toml = $SYSTEM_CONFIG and the region's KMS
# and STS endpoints on 127.0.0.1, in the mount namespace unshare made.
NAMESPACE_SCRIPT = """set -e
mount -t tmpfs -o mode=0755 tmpfs "$OVERLAY"
mkdir "$OVERLAY/upper" "$OVERLAY/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$OVERLAY/upper,workdir=$OVERLAY/work" /etc
mkdir -p /etc/pkcs11-kms
cp "$SYSTEM_CONFIG" /etc/pkcs11-kms/config.toml
chmod 0644 /etc/pkcs11-kms/config.toml
echo "127.0.0.1 kms.$REGION_NAME.amazonaws.com sts.$REGION_NAME.amazonaws.com sts.amazonaws.com" >> /etc/hosts
exec "$SETPRIV" --reuid=65534 --regid=65534 --clear-groups "$@"
"""
SYSTEM = (f'region = "{REGION}"\nconnect_timeout = 2\nread_timeout = 2\nmax_attempts = 1\n'
          '[[token]]\nlabel = "system"\n')


@pytest.fixture(scope="module")
def site(module_path):
    """A world-readable folder with the host twice: setuid root, and without the bit."""
    assert os.geteuid() == 0, "the setuid host needs root to install; CI runs this as root"
    for path in (Path(module_path), Path(sys.prefix)):  # nobody loads the module
        closed = [p for p in (path, *path.parents) if not os.stat(p).st_mode & stat.S_IXOTH]
        assert not closed, f"{closed[0]} is closed to other users: nobody cannot load the module"
    folder = Path(tempfile.mkdtemp(prefix="pkcs11-kms-setuid-"))
    try:
        folder.chmod(0o755)
        plain = Path(build_c_host("secure_host", folder))
        setuid = folder / "secure_host_setuid"
        shutil.copy(plain, setuid)
        os.chown(setuid, 0, 0)
        setuid.chmod(0o4755)
        (folder / "overlay").mkdir()
        yield folder, plain, setuid
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def host(site, module_path, env: dict[str, str], system: str, privileged: bool) -> dict:
    """Runs the host as nobody (setuid root when `privileged`) with `system` as the system config;
    returns its lines by first word, its stderr under "stderr"."""
    folder, plain, setuid = site
    (folder / "system.toml").write_text(system)
    env = {**env, "OVERLAY": str(folder / "overlay"), "SYSTEM_CONFIG": str(folder / "system.toml"),
           "REGION_NAME": REGION, "SETPRIV": tool("setpriv", "util-linux")}
    proc = run([tool("unshare", "util-linux"), "--mount", "--propagation", "private",
                "sh", "-c", NAMESPACE_SCRIPT, "sh", str(setuid if privileged else plain),
                module_path], env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines: dict = {"stderr": proc.stderr}
    for line in proc.stdout.splitlines():
        word, _, rest = line.partition(" ")
        lines[word] = rest.strip()
    assert lines["secure"] == ("1" if privileged else "0"), proc.stdout
    assert lines["C_Initialize"] == "0", proc.stdout + proc.stderr
    return lines


def base_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PKCS11_KMS", "AWS_ENDPOINT_URL", "AWS_CA_BUNDLE", "XDG_"))}
    env["HOME"] = str(folder)
    return env


def objects(lines: dict) -> tuple[str, int]:
    rv, count = lines["objects"].split()
    return rv, int(count)


def test_planted_config_log_level_log_file_and_endpoint(site, module_path, kms_server, seeded):
    folder = site[0]
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    os.chown(logs, NOBODY, NOBODY)  # nobody may create its log file there
    planted_log = logs / "planted.log"
    planted = folder / "planted.toml"
    planted.write_text(f'region = "{REGION}"\nlog_level = "debug"\nlog_file = "{planted_log}"\n'
                       '[[token]]\nlabel = "planted"\n')
    planted.chmod(0o644)
    env = {**base_env(folder), "PKCS11_KMS_CONFIG": str(planted), "PKCS11_KMS_LOG": "debug",
           "AWS_ENDPOINT_URL": kms_server.endpoint_url}

    used = host(site, module_path, env, SYSTEM, privileged=False)
    assert used["token"] == "planted"
    assert objects(used)[0] == "0" and objects(used)[1] >= 6  # listed from AWS_ENDPOINT_URL
    assert "DEBUG config file " + str(planted) in used["stderr"]  # PKCS11_KMS_LOG=debug
    assert planted_log.is_file() and "DEBUG" in planted_log.read_text()
    planted_log.unlink()

    ignored = host(site, module_path, env, SYSTEM, privileged=True)
    assert ignored["token"] == "system"  # not PKCS11_KMS_CONFIG's
    # the region's own endpoint (127.0.0.1:443 here: nothing there, or not KMS's certificate),
    # not the emulator of AWS_ENDPOINT_URL
    assert objects(ignored)[0] != "0", ignored
    assert "DEBUG" not in ignored["stderr"]  # PKCS11_KMS_LOG ignored
    assert not planted_log.exists()


def test_planted_user_config(site, module_path, kms_server):
    folder = site[0]
    user = folder / "xdg" / "pkcs11-kms" / "config.toml"
    user.parent.mkdir(parents=True, exist_ok=True)
    for d in (user.parent, user.parent.parent):
        d.chmod(0o755)
    user.write_text(f'region = "{REGION}"\nendpoint_url = "{kms_server.endpoint_url}"\n'
                    '[[token]]\nlabel = "user"\n')
    user.chmod(0o644)
    env = {**base_env(folder), "XDG_CONFIG_HOME": str(folder / "xdg")}
    assert host(site, module_path, env, SYSTEM, privileged=False)["token"] == "user"
    assert host(site, module_path, env, SYSTEM, privileged=True)["token"] == "system"


def test_planted_ca_bundle(site, module_path, https_kms_server):
    folder = site[0]
    seed_key(https_kms_server.client(), None, "ECC_NIST_P256", "SIGN_VERIFY")
    ca = folder / "planted-ca.pem"
    shutil.copy(https_kms_server.ca_bundle, ca)
    ca.chmod(0o644)
    # the system config names the endpoint but no CA bundle: AWS_CA_BUNDLE would say which CAs
    system = SYSTEM.replace("[[token]]", f'endpoint_url = "{https_kms_server.endpoint_url}"\n'
                                         "[[token]]")
    env = {**base_env(folder), "AWS_CA_BUNDLE": str(ca)}
    trusted = host(site, module_path, env, system, privileged=False)
    assert objects(trusted)[0] == "0" and objects(trusted)[1] >= 2
    ignored = host(site, module_path, env, system, privileged=True)
    assert ignored["token"] == "system"
    assert objects(ignored)[0] != "0", ignored  # the emulator's CA is not botocore's
    assert "TLS" in ignored["stderr"] or "Tls" in ignored["stderr"], ignored["stderr"]


# ---- credential providers -------------------------------------------------------------------

CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@pytest.fixture
def recorder():
    """A server on loopback that records each request (a container credentials endpoint, an STS
    endpoint) and answers GET with credentials."""
    seen: list[tuple[str, str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(("GET", self.path, self.headers.get("Authorization", ""), b""))
            body = json.dumps({"AccessKeyId": "planted", "SecretAccessKey": "planted",
                               "Token": "planted", "Expiration": "2099-01-01T00:00:00Z"}).encode()
            self._answer(200, body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(("POST", self.path, self.headers.get("Authorization", ""), body))
            self._answer(403, b"<ErrorResponse><Error><Code>AccessDenied</Code></Error>"
                              b"</ErrorResponse>")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def without_credentials(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in base_env(folder).items() if k not in CREDENTIAL_VARIABLES}
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # never the instance's metadata service
    return env


def test_planted_container_credentials(site, module_path, kms_server, seeded, recorder):
    url, seen = recorder
    folder = site[0]
    # the system config names the emulator: credentials are all that differs between the runs
    system = SYSTEM.replace("[[token]]", f'endpoint_url = "{kms_server.endpoint_url}"\n[[token]]')
    env = {**without_credentials(folder),
           "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{url}/planted-credentials",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN": "planted-token"}
    used = host(site, module_path, env, system, privileged=False)
    assert ("GET", "/planted-credentials", "planted-token", b"") in seen
    assert objects(used)[0] == "0" and objects(used)[1] >= 6  # with the planted credentials
    seen.clear()
    ignored = host(site, module_path, env, system, privileged=True)
    assert seen == []  # not asked
    assert objects(ignored)[0] != "0", ignored  # no credentials: root has none here


def test_planted_web_identity(site, module_path, kms_server, recorder):
    url, seen = recorder
    folder = site[0]
    token = folder / "web-identity-token"
    token.write_text("planted-web-identity-token")
    token.chmod(0o644)
    env = {**without_credentials(folder), "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
           "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/planted",
           "AWS_ENDPOINT_URL_STS": url}
    system = SYSTEM.replace("[[token]]", f'endpoint_url = "{kms_server.endpoint_url}"\n[[token]]')

    def read_since(mark: float) -> bool:
        return token.stat().st_atime > mark  # relatime: a read after the last write moves it

    os.utime(token, (1_000_000, token.stat().st_mtime))
    host(site, module_path, env, system, privileged=False)
    assert read_since(1_000_000)
    assert any(method == "POST" and b"AssumeRoleWithWebIdentity" in body
               and b"planted-web-identity-token" in body for method, _, _, body in seen), seen
    seen.clear()
    os.utime(token, (1_000_000, token.stat().st_mtime))
    ignored = host(site, module_path, env, system, privileged=True)
    assert not read_since(1_000_000)  # the token file was not even read
    assert seen == []
    assert objects(ignored)[0] != "0", ignored


def test_restricted_session_reads_no_redirecting_variable(tmp_path, monkeypatch):
    """kms/privileged.py on a session of its own (this process is not privileged, so the
    filtered environment is made here as trust.environ() makes it in a privileged one)."""
    from aiobotocore.session import AioSession

    from pkcs11_kms import trust
    from pkcs11_kms.kms.privileged import restrict

    token = tmp_path / "token"
    token.write_text("planted")
    planted = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9/",
               "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6",
               "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/credentials",
               "AWS_CONTAINER_AUTHORIZATION_TOKEN": "planted",
               "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
               "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/planted",
               "AWS_ENDPOINT_URL_STS": "http://127.0.0.1:9"}
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    filtered = {k: v for k, v in os.environ.items() if not trust.ignored(k)}
    assert not set(planted) & set(filtered)

    async def look(session) -> tuple:
        resolver = session.get_component("credential_provider")
        try:  # None: the provider found no URL to fetch credentials from
            tried = await resolver.get_provider("container-role").load() is not None
        except Exception:  # noqa: BLE001 - it tried the planted URL (nothing listens there)
            tried = True
        web = resolver.get_provider("assume-role-with-web-identity")
        async with session.create_client("sts", region_name=REGION, aws_access_key_id="a",
                                         aws_secret_access_key="b") as sts:
            endpoint = sts.meta.endpoint_url
        return (session.get_config_variable("ec2_metadata_service_endpoint"),
                session.get_config_variable("ec2_metadata_service_endpoint_mode"),
                tried, web._get_config("web_identity_token_file"), endpoint)

    plain = asyncio.run(look(AioSession()))
    assert plain == ("http://127.0.0.1:9/", "IPv6", True, str(token), "http://127.0.0.1:9")
    restricted = AioSession()
    restrict(restricted, filtered)
    assert asyncio.run(look(restricted)) == (None, None, False, None,
                                             f"https://sts.{REGION}.amazonaws.com")
    assert os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == planted[
        "AWS_CONTAINER_CREDENTIALS_FULL_URI"]  # the process environment is untouched
