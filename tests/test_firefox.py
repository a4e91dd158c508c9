"""Firefox (Debian's firefox-esr, headless) authenticates to HTTPS servers with client
certificates whose keys are in KMS: the certificate comes from the token, Firefox picks it by
itself ("Select Automatically"), signs the handshake through the module, and the server (openssl
s_server -www, which requires and verifies the certificate) shows it on the page Firefox loads.

Firefox is driven with its Marionette remote protocol (length-prefixed JSON on a loopback socket;
no geckodriver): navigate, then read the page's text. Two ways of loading the module:
- a profile prepared with NSS's tools: modutil adds the module, certutil trusts the web server's CA;
- enterprise policies (conf/firefox-policies.json: SecurityDevices and the auto-select pref) in
  Firefox's distribution directory; as root in a private mount namespace, so the machine's
  Firefox stays untouched.

Firefox never reaches the internet: every proxied request (anything but loopback) goes to a
sinkhole proxy in this test that answers nothing, and updates, telemetry, studies, remote
settings, DNS over HTTPS and captive-portal checks are off.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hosts import free_port, kms_self_signed, pem, run, tls_server, tool

from keyseed import SeededKey, key_entries, seed_key, write_config

FIREFOX = "firefox-esr"
POLICIES_FILE = Path(__file__).resolve().parents[1] / "conf" / "firefox-policies.json"
DISTRIBUTION = Path("/usr/lib/firefox-esr/distribution")
# The servers: name -> (client certificate's key, extra s_server options, what they prove).
SERVERS = {
    "rsa-tls13": ("rsa", ["-tls1_3"]),                                # RSA-PSS (TLS 1.3)
    "rsa-tls12": ("rsa", ["-tls1_2", "-client_sigalgs", "RSA+SHA256"]),  # PKCS#1 v1.5
    "ec-tls13": ("ec", ["-tls1_3"]),                                  # ECDSA P-256
}
PREFS = {
    # the client certificate: no dialog, Firefox picks the one the server's CA list matches
    "security.default_personal_cert": "Select Automatically",
    # nothing leaves the machine: all but loopback goes to the sinkhole proxy
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1",
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.no_proxies_on": "",
    "network.proxy.allow_hijacking_localhost": False,
    "network.trr.mode": 5,
    "network.dns.disablePrefetch": True,
    "network.http.speculative-parallel-limit": 0,
    "network.http.http3.enable": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "security.OCSP.enabled": 0,
    "services.settings.server": "http://127.0.0.1:9/",
    "app.update.disabledForTesting": True,
    "app.update.auto": False,
    "app.normandy.enabled": False,
    "app.shield.optoutstudies.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.downloads.remote.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    "browser.search.update": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.page": 0,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.newtabpage.enabled": False,
    "browser.aboutwelcome.enabled": False,
    "browser.discovery.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.server": "",
    "geo.provider.network.url": "",
    "media.gmp-manager.url": "",
}


# ---- a minimal Marionette client -----------------------------------------------------------------


class MarionetteError(Exception):
    pass


class Marionette:
    """Marionette protocol 3: each message is `<length>:<json>`; commands are
    [0, id, name, params], answers [1, id, error, result]."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buffer = b""
        self.last_id = 0
        hello = self._read()
        assert hello.get("marionetteProtocol") == 3, hello

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("Marionette closed the connection")
        self.buffer += chunk

    def _read(self):
        while b":" not in self.buffer:
            self._fill()
        size, _, self.buffer = self.buffer.partition(b":")
        while len(self.buffer) < int(size):
            self._fill()
        message, self.buffer = self.buffer[:int(size)], self.buffer[int(size):]
        return json.loads(message)

    def call(self, name: str, params: dict | None = None):
        self.last_id += 1
        data = json.dumps([0, self.last_id, name, params or {}]).encode()
        self.sock.sendall(str(len(data)).encode() + b":" + data)
        kind, message_id, error, result = self._read()
        assert (kind, message_id) == (1, self.last_id)
        if error:
            raise MarionetteError(error.get("message", error))
        return result

    def visit(self, url: str) -> tuple[str | None, str]:
        """Navigates; returns (Firefox's error, e.g. its error page, or None; the page's text)."""
        error = None
        try:
            self.call("WebDriver:Navigate", {"url": url})
        except MarionetteError as e:
            error = str(e)
        text = self.call("WebDriver:ExecuteScript", {
            "script": "return document.body ? document.body.textContent : '';", "args": []})
        return error, text["value"]

    def close(self) -> None:
        self.sock.close()


def write_prefs(profile: Path, proxy_port: int, select_automatically: bool = True) -> None:
    """user.js: PREFS, the sinkhole as proxy, Marionette on a free port."""
    prefs = dict(PREFS, **{"network.proxy.http_port": proxy_port,
                           "network.proxy.ssl_port": proxy_port, "marionette.port": 0})
    if not select_automatically:
        del prefs["security.default_personal_cert"]
    lines = [f"user_pref({json.dumps(name)}, {json.dumps(value)});\n"
             for name, value in prefs.items()]
    (profile / "user.js").write_text("".join(lines))


@contextmanager
def firefox(profile: Path, env: dict[str, str], prefix: tuple[str, ...] = ()):
    """Headless Firefox on `profile` with Marionette on a free port; quit or killed on exit."""
    port_file = profile / "MarionetteActivePort"
    port_file.unlink(missing_ok=True)
    cmd = [*prefix, tool(FIREFOX, "firefox-esr"), "--headless", "--marionette", "--no-remote",
           "--profile", str(profile), "about:blank"]
    with open(profile.parent / f"{profile.name}-firefox.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    marionette = None
    try:
        deadline = time.monotonic() + 60
        port = None
        while port is None:
            assert proc.poll() is None, f"Firefox exited with {proc.returncode}"
            assert time.monotonic() < deadline, "Firefox did not open its Marionette port"
            try:
                port = int(port_file.read_text())
            except (FileNotFoundError, ValueError):
                time.sleep(0.1)
        marionette = Marionette(port)
        marionette.call("WebDriver:NewSession", {"capabilities": {"alwaysMatch": {
            "acceptInsecureCerts": False, "timeouts": {"pageLoad": 30000}}}})
        yield marionette
        marionette.call("Marionette:Quit", {"flags": ["eForceQuit"]})
        proc.wait(timeout=30)
    finally:
        if marionette is not None:
            marionette.close()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Firefox, or what is left of its children
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


class Sinkhole:
    """A proxy that answers nothing: records the first line of each request and hangs up."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.requests: list[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="sinkhole", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    first_line = conn.recv(4096).split(b"\r\n", 1)[0]
                except OSError:
                    first_line = b"?"
                self.requests.append(first_line.decode(errors="replace"))

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.server.close()


# ---- fixtures ------------------------------------------------------------------------------------


@dataclass
class Web:
    env: dict[str, str]
    tmp: Path
    keys: dict[str, SeededKey]
    client_certs: dict[str, x509.Certificate]
    ca_file: Path
    servers: dict[str, tuple[int, Path]]       # name -> (port, s_server log)
    sinkhole: Sinkhole


def web_pki(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 that it issued: (ca.pem, server.pem, server.key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def builder(subject: str, issuer: str, public_key):
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=2)))

    ca = (builder("pkcs11-kms test web CA", "pkcs11-kms test web CA", ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    server = (builder("127.0.0.1", "pkcs11-kms test web CA", key.public_key())
              .add_extension(x509.SubjectAlternativeName(
                  [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = tmp / "web-ca.pem", tmp / "web-server.pem", tmp / "web-server.key"
    paths[0].write_bytes(pem(ca))
    paths[1].write_bytes(pem(server))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def web(https_kms_server, tmp_path_factory):
    """Token "firefox" (KMS over HTTPS) with an RSA-2048 and a P-256 key and their self-signed
    client certificates; one s_server per entry of SERVERS, each requiring a certificate issued
    by one of them (its CA list names it, which is how Firefox picks)."""
    tool(FIREFOX, "firefox-esr")
    openssl = tool("openssl", "openssl")
    client = https_kms_server.client()
    keys = {"rsa": seed_key(client, None, "RSA_2048", "SIGN_VERIFY"),
            "ec": seed_key(client, None, "ECC_NIST_P256", "SIGN_VERIFY")}
    tmp = tmp_path_factory.mktemp("firefox")
    client_certs = {}
    for name, key in keys.items():
        client_certs[name] = kms_self_signed(client, key, f"firefox {name} client")
        (tmp / f"{name}.pem").write_bytes(pem(client_certs[name]))
    entries = key_entries(keys, by="key_id")
    config = write_config(tmp / "config.toml", https_kms_server,
                          f'[[token]]\nlabel = "firefox"\nkeys = [{entries}]\n'
                          'certificates = ["rsa.pem", "ec.pem"]\n')
    (tmp / "home").mkdir()
    # MOZ_REMOTE_SETTINGS_DEVTOOLS: release builds honour services.settings.server only with it
    env = {**os.environ, "PKCS11_KMS_CONFIG": config, "HOME": str(tmp / "home"),
           "MOZ_HEADLESS": "1", "MOZ_CRASHREPORTER_DISABLE": "1",
           "MOZ_REMOTE_SETTINGS_DEVTOOLS": "1"}
    for name in ("OPENSSL_CONF", "DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(name, None)
    ca_file, server_cert, server_key = web_pki(tmp)
    servers = {}
    with ExitStack() as stack:
        sinkhole = Sinkhole()
        stack.callback(sinkhole.close)
        for name, (key_name, options) in SERVERS.items():
            port, log = free_port(), tmp / f"s_server-{name}.log"
            cmd = [openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(server_cert),
                   "-key", str(server_key), "-CAfile", str(tmp / f"{key_name}.pem"),
                   "-Verify", "1", "-www", *options]
            stack.enter_context(tls_server(cmd, env, port, log, ready_text="ACCEPT"))
            servers[name] = (port, log)
        yield Web(env, tmp, keys, client_certs, ca_file, servers, sinkhole)


def check_page(web: Web, name: str, error: str | None, text: str) -> None:
    """The page is s_server's status page showing the token's certificate as the client's."""
    key_name = SERVERS[name][0]
    _, log = web.servers[name]
    assert error is None, f"{error}\n{log.read_text()}"
    assert "Client certificate" in text, text
    shown = text.split("Client certificate", 1)[1]
    assert f"Subject: CN=firefox {key_name} client" in shown, shown
    assert pem(web.client_certs[key_name]).decode().strip() in shown
    # OpenSSL 3.0 prints "CN = x", 3.5 "CN=x"
    assert f"depth=0 CN=firefox {key_name} client\nverify return:1" in \
        log.read_text().replace(" = ", "=")


def check_firefox_log(log: Path) -> None:
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "pkcs11-kms[" not in text, text


# ---- a profile prepared with modutil and certutil ------------------------------------------------


@pytest.fixture(scope="module")
def profile_visits(web, module_path):
    """One Firefox run on a profile whose NSS database has the module (modutil) and trusts the web
    CA (certutil); it visits every server: {name: (error, page text)}."""
    profile = web.tmp / "profile"
    profile.mkdir()
    db = f"sql:{profile}"
    for cmd in ([tool("certutil"), "-N", "-d", db, "--empty-password"],
                [tool("certutil"), "-A", "-d", db, "-n", "test web CA", "-t", "C,,",
                 "-i", str(web.ca_file)],
                [tool("modutil"), "-dbdir", db, "-add", "kms", "-libfile", module_path, "-force"]):
        proc = run(cmd, web.env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    write_prefs(profile, web.sinkhole.port)
    visits = {}
    with firefox(profile, web.env) as browser:
        for name, (port, _) in web.servers.items():
            visits[name] = browser.visit(f"https://127.0.0.1:{port}/")
    return visits, web.tmp / "profile-firefox.log"


@pytest.mark.parametrize("name", list(SERVERS))
def test_firefox_profile_client_certificate(web, profile_visits, name):
    visits, _ = profile_visits
    check_page(web, name, *visits[name])


def test_firefox_profile_run_is_clean(web, profile_visits):
    """No module error in Firefox's output, and nothing tried to leave the machine."""
    _, log = profile_visits
    check_firefox_log(log)
    assert web.sinkhole.requests == [], web.sinkhole.requests


# ---- enterprise policies (conf/firefox-policies.json) --------------------------------------------


POLICY_SCRIPT = """set -e
mount --bind "$FIREFOX_POLICIES_DIR" "$FIREFOX_DISTRIBUTION"
exec "$@"
"""


def test_firefox_policies_load_module(web, module_path):
    """conf/firefox-policies.json with the module path filled in (plus the test's CA through
    Certificates.Install) in Firefox's distribution directory; a fresh profile with no NSS
    database. Firefox adds the security device itself and authenticates with the EC key."""
    assert os.geteuid() == 0, "mounting over Firefox's distribution directory needs root"
    policies = json.loads(POLICIES_FILE.read_text().replace("@MODULE_PATH@", module_path))
    assert policies["policies"]["SecurityDevices"]["Add"] == {"AWS KMS": module_path}
    policies["policies"].update({
        "Certificates": {"Install": [str(web.ca_file)]},
        "DisableAppUpdate": True, "DisableTelemetry": True, "DisableFirefoxStudies": True,
    })
    directory = web.tmp / "distribution"
    directory.mkdir()
    (directory / "policies.json").write_text(json.dumps(policies, indent=2))
    distribution = DISTRIBUTION.resolve()
    assert distribution.is_dir(), f"{DISTRIBUTION} missing: is firefox-esr installed?"
    profile = web.tmp / "policy-profile"
    profile.mkdir()
    write_prefs(profile, web.sinkhole.port, select_automatically=False)  # the policy sets it
    env = dict(web.env, FIREFOX_POLICIES_DIR=str(directory), FIREFOX_DISTRIBUTION=str(distribution))
    prefix = (tool("unshare", "util-linux"), "--mount", "--propagation", "private",
              "sh", "-c", POLICY_SCRIPT, "sh")
    with firefox(profile, env, prefix) as browser:
        port, _ = web.servers["ec-tls13"]
        error, text = browser.visit(f"https://127.0.0.1:{port}/")
    assert f"library={module_path}" in (profile / "pkcs11.txt").read_text()
    check_page(web, "ec-tls13", error, text)
    check_firefox_log(web.tmp / "policy-profile-firefox.log")
    assert web.sinkhole.requests == [], web.sinkhole.requests
