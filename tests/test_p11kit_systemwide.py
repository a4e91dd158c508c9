"""p11-kit, registered system-wide (issue 9, requirement 3): with conf/p11-kit/kms.module among the
machine's own module files, programs that never use a KMS key work exactly as they do without it,
and the KMS emulator sees no request from them; `enable-in`/`disable-in` pick the programs.

"System-wide" is test_p11kit.py's private mount namespace (root): a temporary directory holding
the machine's module files, plus kms.module when registered, is mounted over
/usr/share/p11-kit/modules. Each program runs once without kms.module and once with it; the runs
must end alike (exit code, output, errors), and the emulator's request counter (its fault
injector's stats) must stay at 0 during the second.

Which programs load the module, seen in the dynamic linker's log (LD_DEBUG=files) and the module's
debug log ("initialised ..." at C_Initialize):
- curl, `openssl s_client` and Python's `ssl` (OpenSSL), gnutls-cli with a CA file, and
  pkcs11-tool on p11-kit-trust.so: never; they do not read p11-kit's module list.
- gnutls-cli trusting `pkcs11:` (the trust store Fedora and RHEL build GnuTLS with, so every GnuTLS
  program there): GnuTLS loads every registered module but initialises only trust-policy ones, so
  ours is loaded and never initialised; its Python does not start.
- p11tool --list-tokens (GnuTLS listing tokens), p11-kit list-modules and pkcs11-tool on
  p11-kit-proxy.so: load and initialise it and show its token, with no KMS request (the token comes
  from the config). With `token_per_key = true` listed keys are tokens, so listing tokens does
  call KMS; `enable-in`/`disable-in` keep such programs out.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hosts import free_port, tls_server, tool
from keyseed import seed_key, write_config
from p11kitns import MODULE_FILE, PROXY, SYSTEM_DIRS, P11Kit, module_file

TRUST_MODULE = Path("/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-trust.so")
# The CA file p11-kit-trust.so reads on Debian (its slot description says so). The namespace of
# the `pkcs11:` trust case mounts the test CA over it, so that GnuTLS trusts the test server there.
TRUST_FILE = Path("/etc/ssl/certs/ca-certificates.crt")
TRUST_MOUNT = 'mount --bind "$0" ' + str(TRUST_FILE) + ' && exec "$@"'
BODY = "an ordinary HTTPS page: no KMS key here\n"
REQUEST = "GET /index.txt HTTP/1.0\r\n\r\n"
PY_CLIENT = ("import ssl, sys, urllib.request\n"
             "context = ssl.create_default_context(cafile=sys.argv[1])\n"
             "with urllib.request.urlopen(sys.argv[2], context=context, timeout=30) as page:\n"
             "    sys.stdout.write(page.read().decode())\n")
TOKEN = "systemwide"
LOADED = re.compile(r"\bfile=\S*/libkms-pkcs11\.so\b")
INITIALISED = b"DEBUG initialised pkcs11-kms"


@dataclass
class Observed:
    proc: subprocess.CompletedProcess
    loaded: bool            # the dynamic linker loaded libkms-pkcs11.so
    initialised: bool       # the module's C_Initialize ran (its debug log)

    def result(self) -> tuple[int, str, str]:
        return self.proc.returncode, self.proc.stdout, self.proc.stderr


@dataclass
class SystemWide:
    kit: P11Kit             # kit.modules: the machine's module files, plus kms.module
    kms: object             # the HTTPS emulator, which counts KMS requests
    config: Path            # $PKCS11_KMS_CONFIG; the module logs to `log` at debug level
    log: Path
    ca: Path                # trusted by the clients of the HTTPS server
    port: int               # of the HTTPS server on 127.0.0.1, serving BODY as /index.txt

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/index.txt"

    def register(self, extra: str = "") -> None:
        self.kit.install(module_file(self.kit.module_path, extra))

    def unregister(self) -> None:
        (self.kit.modules / "kms.module").unlink(missing_ok=True)

    def write_config(self, token: str) -> None:
        write_config(self.config, self.kms,
                     f'log_level = "debug"\nlog_file = "{self.log}"\n[[token]]\n{token}')

    def reset(self) -> None:
        """The plain kms.module registered, and the config of TOKEN with its named key."""
        self.write_config(f'label = "{TOKEN}"\nkeys = ["{self.kit.keys["ec"].key_id}"]\n')
        self.register()

    def observe(self, cmd: list[str], **kw) -> Observed:
        trace = Path(tempfile.mkdtemp(prefix="ld-", dir=self.kit.tmp))
        env = {**self.kit.env, "LD_DEBUG": "files", "LD_DEBUG_OUTPUT": str(trace / "ld")}
        logged = self.log.stat().st_size if self.log.exists() else 0
        proc = self.kit.run(cmd, env, **kw)
        loaded = any(LOADED.search(f.read_text(errors="replace")) for f in trace.iterdir())
        log = self.log.read_bytes()[logged:] if self.log.exists() else b""
        return Observed(proc, loaded, INITIALISED in log)

    def compare(self, cmd: list[str], extra: str = "", **kw) -> tuple[Observed, Observed, int]:
        """`cmd` without kms.module, then with it (plus `extra` settings): both runs, and the KMS
        requests the emulator received during the second."""
        self.unregister()
        without = self.observe(cmd, **kw)
        self.register(extra)
        self.kms.clear_faults()  # also zeroes the request counter
        registered = self.observe(cmd, **kw)
        return without, registered, self.kms.faults()["stats"]["requests"]


@pytest.fixture(scope="module")
def system(https_kms_server, tmp_path_factory, module_path) -> SystemWide:
    """Token TOKEN holding one P-256 key (named in the config), kms.module registered next to the
    machine's module files, and `openssl s_server -WWW` on loopback with a throwaway CA."""
    from pkcs11_kms.emulator.tls import make_test_pki

    assert os.geteuid() == 0, \
        "registering a module system-wide takes root (a private mount namespace)"
    tool("p11-kit")
    assert PROXY.is_file() and TRUST_MODULE.is_file(), "install p11-kit-modules"
    tmp = tmp_path_factory.mktemp("systemwide")
    key = seed_key(https_kms_server.client(), f"{TOKEN}-ec", "ECC_NIST_P256", "SIGN_VERIFY")
    home = tmp / "home"
    modules = home / ".config" / "pkcs11" / "modules"
    modules.mkdir(parents=True)
    (tmp / "empty").mkdir()
    for directory in SYSTEM_DIRS:  # the namespace hides them: keep what they register
        for path in sorted(directory.glob("*.module")) if directory.is_dir() else ():
            (modules / path.name).write_bytes(path.read_bytes())
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(HOME=str(home), PKCS11_KMS_CONFIG=str(tmp / "config.toml"))
    kit = P11Kit(modules, home, env, {"ec": key}, module_path, tmp)
    ca, cert, private = make_test_pki(tmp / "pki")
    www = tmp / "www"
    www.mkdir()
    (www / "index.txt").write_text(BODY)
    port = free_port()
    system = SystemWide(kit, https_kms_server, tmp / "config.toml", tmp / "kms.log", ca, port)
    server = [tool("openssl"), "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert),
              "-key", str(private), "-WWW"]
    with tls_server(server, env, port, tmp / "s_server.log", cwd=www):
        yield system


@pytest.fixture(autouse=True)
def plain_registration(system):
    """Each test starts and ends with the plain kms.module and config."""
    system.reset()
    yield
    system.reset()


def client(system: SystemWide, name: str) -> tuple[list[str], dict]:
    """The command of an ordinary client, and run()'s keywords (stdin for the TLS tools)."""
    request = {"stdin": None, "input": REQUEST}
    gnutls = [tool("gnutls-cli"), "--logfile", str(system.kit.tmp / f"{name}.log"),
              "-p", str(system.port), "127.0.0.1"]
    return {
        "curl": ([tool("curl"), "-sS", "--fail", "--cacert", str(system.ca), system.url], {}),
        "gnutls-cli": ([*gnutls, "--x509cafile", str(system.ca)], request),
        "gnutls-cli-pkcs11-trust": (["sh", "-c", TRUST_MOUNT, str(system.ca), *gnutls,
                                     "--x509cafile", "pkcs11:"], request),
        "openssl-s_client": ([tool("openssl"), "s_client", "-quiet", "-verify_return_error",
                              "-CAfile", str(system.ca), "-connect", f"127.0.0.1:{system.port}"],
                             request),
        "python-ssl": ([sys.executable, "-I", "-c", PY_CLIENT, str(system.ca), system.url], {}),
        "pkcs11-tool-trust": ([tool("pkcs11-tool"), "--module", str(TRUST_MODULE), "-L"], {}),
    }[name]


# client -> (the dynamic linker loads the module, its C_Initialize runs), when registered
CLIENTS = {
    "curl": (False, False),
    "gnutls-cli": (False, False),
    # Debian 13's GnuTLS 3.8 and p11-kit 0.25 also run C_Initialize (still no KMS request)
    "gnutls-cli-pkcs11-trust": (True, "bookworm" not in Path("/etc/os-release").read_text()),
    "openssl-s_client": (False, False),
    "python-ssl": (False, False),
    "pkcs11-tool-trust": (False, False),
}


@pytest.mark.parametrize("name", CLIENTS)
def test_ordinary_clients_unchanged(system, name):
    """Each client succeeds, identically with and without kms.module, and makes no KMS request."""
    cmd, kw = client(system, name)
    without, registered, requests = system.compare(cmd, **kw)
    assert without.proc.returncode == 0, without.result()
    if name != "pkcs11-tool-trust":
        assert without.proc.stdout.endswith(BODY), without.result()
    assert not without.loaded
    assert registered.result() == without.result()
    assert requests == 0
    assert (registered.loaded, registered.initialised) == CLIENTS[name]


LISTERS = {
    "p11tool": ["p11tool", "--list-tokens"],
    "p11-kit": ["p11-kit", "list-modules"],
    "pkcs11-tool-proxy": ["pkcs11-tool", "--module", str(PROXY), "-L"],
}


def lister(name: str) -> list[str]:
    cmd = LISTERS[name]
    return [tool(cmd[0]), *cmd[1:]]


def shows_token(proc) -> bool:
    return re.search(rf"(?:token=|token: |token label\s+: ){TOKEN}$", proc.stdout, re.M) is not None


@pytest.mark.parametrize("kms", ["up", "down"])
@pytest.mark.parametrize("name", LISTERS)
def test_token_listers_load_it_without_kms_request(system, name, kms):
    """Programs that list every registered module's tokens start the module and show its token,
    keep all they showed without it, add no error, and make no KMS request; the same when KMS
    is down (nothing listens at the config's endpoint)."""
    if kms == "down":
        text = system.config.read_text()
        system.config.write_text(text.replace(system.kms.endpoint_url,
                                              f"https://127.0.0.1:{free_port()}"))
    without, registered, requests = system.compare(lister(name))
    assert registered.proc.returncode == 0, registered.result()
    assert registered.loaded and registered.initialised
    assert shows_token(registered.proc) and not shows_token(without.proc), registered.result()
    # p11-kit 0.25's proxy numbers the slots anew when a module is added: "Slot 0 (0x11):"
    def lines(text: str) -> set[str]:
        return {re.sub(r"^Slot \d+ \(0x[0-9a-f]+\):", "Slot:", line) for line in text.splitlines()}

    assert lines(without.proc.stdout) <= lines(registered.proc.stdout)
    assert set(registered.proc.stderr.splitlines()) <= set(without.proc.stderr.splitlines())
    assert requests == 0


@pytest.mark.parametrize("name", LISTERS)
def test_broken_config_costs_one_log_line(system, name):
    """A config the module refuses: the program ends as it does without the module, with the same
    output; only the module's error line is added."""
    system.config.write_text("token_per_key = true\n")  # a [[token]] key at the top level
    without, registered, requests = system.compare(lister(name))
    assert registered.proc.returncode == without.proc.returncode
    assert registered.proc.stdout == without.proc.stdout
    added = set(registered.proc.stderr.splitlines()) - set(without.proc.stderr.splitlines())
    assert added and all("pkcs11-kms[" in line and "ERROR" in line for line in added), added
    assert requests == 0


def test_request_counter_sees_key_use(system):
    """The control: listing the token's objects through the proxy does reach KMS (GetPublicKey),
    so the counter and the config's endpoint are the ones the module uses."""
    _, registered, requests = system.compare(
        [tool("pkcs11-tool"), "--module", str(PROXY), "--token-label", TOKEN, "-O"])
    assert registered.proc.returncode == 0, registered.result()
    assert "Public Key Object; EC" in registered.proc.stdout
    assert requests > 0


def test_listed_keys_are_listed_only_when_used(system):
    """A token of listed keys (alias_prefix): listing tokens makes no KMS request either."""
    system.write_config(f'label = "{TOKEN}"\nalias_prefix = "alias/{TOKEN}-"\n')
    _, registered, requests = system.compare(lister("p11tool"))
    assert shows_token(registered.proc), registered.result()
    assert requests == 0


def test_token_per_key_lists_keys_with_the_tokens(system):
    """With token_per_key the keys are the tokens: every program listing tokens calls KMS. A
    program kept out with `disable-in` does not."""
    system.write_config(f'alias_prefix = "alias/{TOKEN}-"\ntoken_per_key = true\n')
    _, registered, requests = system.compare(lister("p11tool"))
    assert re.search(rf"token={TOKEN}-ec$", registered.proc.stdout, re.M), registered.result()
    assert requests > 0
    without, kept_out, requests = system.compare(lister("p11tool"), "disable-in: p11tool\n")
    assert kept_out.result() == without.result() and not kept_out.loaded
    assert requests == 0


def test_disable_in_keeps_the_module_out_of_that_program(system):
    """`disable-in: p11tool`: p11tool never loads the module (same output as without it), other
    programs still do."""
    without, registered, _ = system.compare(lister("p11tool"), "disable-in: p11tool\n")
    assert registered.result() == without.result() and not registered.loaded
    others = system.observe(lister("p11-kit"))
    assert others.proc.returncode == 0 and shows_token(others.proc), others.result()


def test_disable_in_proxy_hides_it_from_proxy_users(system):
    """`disable-in: p11-kit-proxy`: programs using p11-kit-proxy.so do not see the token (p11-kit
    0.24 still loads the library there, never initialising it); programs using p11-kit directly
    do."""
    without, registered, requests = system.compare(lister("pkcs11-tool-proxy"),
                                                   "disable-in: p11-kit-proxy\n")
    assert registered.result() == without.result() and not registered.initialised
    assert requests == 0
    direct = system.observe(lister("p11tool"))
    assert direct.proc.returncode == 0 and shows_token(direct.proc), direct.result()


def test_enable_in_loads_it_only_in_the_programs_named(system):
    """`enable-in: pkcs11-tool`: pkcs11-tool sees the token through the proxy module; p11tool and
    p11-kit itself do not load the module. (p11-kit 0.24.1 wants the program's own name here:
    `enable-in: p11-kit-proxy` alone loads the module in no program, not even through the proxy.)"""
    for name in ("p11tool", "p11-kit"):
        without, registered, _ = system.compare(lister(name), "enable-in: pkcs11-tool\n")
        assert registered.result() == without.result() and not registered.loaded, name
    proxied = system.observe(lister("pkcs11-tool-proxy"))
    assert proxied.proc.returncode == 0 and shows_token(proxied.proc), proxied.result()


@pytest.mark.parametrize("setting", ["enable-in", "disable-in"])
def test_shipped_examples(system, setting):
    """The commented examples of kms.module, uncommented, do what their comments say: with
    `enable-in`, p11tool (named) loads the module and p11-kit (not named) does not; with
    `disable-in: p11-kit-proxy`, programs using the proxy module do not see it, p11tool does."""
    examples = re.findall(rf"^# ({setting}: .*)$", MODULE_FILE.read_text(), re.M)
    assert len(examples) == 1, examples
    named = set(re.split(r"[,\s]+", examples[0].split(":", 1)[1].strip()))
    system.register(examples[0] + "\n")
    if setting == "enable-in":
        assert "p11tool" in named and "p11-kit" not in named, named
        assert shows_token(system.observe(lister("p11tool")).proc)
        assert not system.observe(lister("p11-kit")).loaded
    else:
        assert named == {"p11-kit-proxy"}, named
        assert not shows_token(system.observe(lister("pkcs11-tool-proxy")).proc)
        assert shows_token(system.observe(lister("p11tool")).proc)
