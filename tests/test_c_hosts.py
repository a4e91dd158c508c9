"""End to end through the built library from real C hosts: pkcs11-tool (OpenSC), p11tool (GnuTLS),
NSS's modutil/certutil and openssl with the libp11 engine (docs/design.md, "Consumers").

Every tool is required: a tool missing in CI fails its tests instead of skipping them.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ENGINE = Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so")
PACKAGES = {
    "pkcs11-tool": "opensc",
    "p11tool": "gnutls-bin",
    "certutil": "libnss3-tools",
    "modutil": "libnss3-tools",
    "openssl": "openssl",
    "gcc": "gcc",
}
P256_OID_DER = "06082a8648ce3d030107"  # CKA_EC_PARAMS of prime256v1
MODULE_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} pkcs11-kms\[\d+\]: (\w+) (.*)$")
ACCEPTANCE = ("web-tls", "ec-sign", "decrypt")


# ---- helpers -------------------------------------------------------------------------------------


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (Debian package {PACKAGES[name]}): CI must provide it"
    return path


def run(cmd: list[str], env: dict[str, str], *, text: bool = True, timeout: float = 60, **kw):
    """Runs a host; it must never die by a signal, and never show a Python traceback unless the
    caller checks stderr itself (check_stderr=False)."""
    check_stderr = kw.pop("check_stderr", True)
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=text, timeout=timeout,
        stdin=kw.pop("stdin", subprocess.DEVNULL), **kw,
    )
    assert proc.returncode >= 0, f"{cmd[0]} died by signal {-proc.returncode}: {proc.stderr!r}"
    if check_stderr:
        stderr = proc.stderr if text else proc.stderr.decode(errors="replace")
        assert "Traceback" not in stderr, stderr
    return proc


def ckid(key) -> str:
    """CKA_ID as pkcs11-tool prints it: the key id's hex without dashes (16 bytes)."""
    return key.key_id.replace("-", "")


def pct_id(key) -> str:
    return "".join(f"%{b:02X}" for b in bytes.fromhex(ckid(key)))


def colon_id(key) -> str:
    return ":".join(f"{b:02x}" for b in bytes.fromhex(ckid(key)))


def public_numbers(der: bytes):
    key = serialization.load_der_public_key(der)
    if isinstance(key, rsa.RSAPublicKey):
        return ("rsa", key.public_numbers().n, key.public_numbers().e)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    n = key.public_numbers()
    return ("ec", key.curve.name, n.x, n.y)


def assert_same_public_key(got: bytes, expected: bytes) -> None:
    """The host's public key is KMS's: same numbers, and the same DER SubjectPublicKeyInfo."""
    assert public_numbers(got) == public_numbers(expected)
    assert got == expected


def ec_point_hex(der: bytes) -> str:
    """CKA_EC_POINT of a P-256 key: DER OCTET STRING of the uncompressed point."""
    key = serialization.load_der_public_key(der)
    point = key.public_bytes(serialization.Encoding.X962,
                             serialization.PublicFormat.UncompressedPoint)
    return (bytes([0x04, len(point)]) + point).hex()


def parse_pkcs11_tool_objects(stdout: str) -> list[dict[str, str]]:
    """pkcs11-tool -O output: one dict per object, `kind` holding the header line."""
    objects: list[dict[str, str]] = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            objects.append({"kind": line.rstrip()})
        else:
            name, _, value = line.strip().partition(":")
            objects[-1][name.strip()] = value.strip()
    return objects


def module_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "pkcs11-kms[" in line]


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(acceptance_config) -> dict[str, str]:
    return dict(os.environ, PKCS11_KMS_CONFIG=acceptance_config)


@pytest.fixture(scope="module")
def pkcs11_tool() -> str:
    return tool("pkcs11-tool")


@pytest.fixture(scope="module")
def p11tool() -> str:
    return tool("p11tool")


@pytest.fixture(scope="module")
def expected_objects(seeded) -> list[tuple[str, str, str]]:
    """(pkcs11-tool header, label, ID) of the six key objects of the acceptance token, in order."""
    web, ecs, dec = seeded["web-tls"], seeded["ec-sign"], seeded["decrypt"]
    return [
        ("Private Key Object; RSA", "web-tls", ckid(web)),
        ("Public Key Object; RSA 2048 bits", "web-tls", ckid(web)),
        ("Private Key Object; EC", ecs.key_id, ckid(ecs)),
        ("Public Key Object; EC  EC_POINT 256 bits", ecs.key_id, ckid(ecs)),
        ("Private Key Object; RSA", "decrypt", ckid(dec)),
        ("Public Key Object; RSA 3072 bits", "decrypt", ckid(dec)),
    ]


@pytest.fixture(scope="module")
def tool_objects(pkcs11_tool, module_path, env) -> subprocess.CompletedProcess:
    return run([pkcs11_tool, "--module", module_path, "-O"], env)


# ---- pkcs11-tool (OpenSC) ------------------------------------------------------------------------


def test_pkcs11_tool_list_slots(pkcs11_tool, module_path, env):
    proc = run([pkcs11_tool, "--module", module_path, "-L"], env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "Available slots:"
    assert len([line for line in lines if line.startswith("Slot ")]) == 1
    assert lines[1] == "Slot 0 (0x0): AWS KMS: acceptance"
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines[2:])}
    assert fields["token label"] == "acceptance"
    assert fields["token manufacturer"] == "pkcs11-kms"
    flags = {f.strip() for f in fields["token flags"].split(",")}
    # Not "readonly" (CKF_WRITE_PROTECTED) since read/write sessions are allowed (commit 672f97e:
    # pkcs11-tool --test and Java open them).
    assert {"rng", "token initialized"} <= flags
    assert "login required" not in flags
    assert "login required" not in proc.stdout


def test_pkcs11_tool_list_objects(tool_objects, expected_objects, seeded):
    assert tool_objects.returncode == 0, tool_objects.stderr
    objects = parse_pkcs11_tool_objects(tool_objects.stdout)
    assert [(o["kind"], o["label"], o["ID"]) for o in objects] == expected_objects
    for o in objects:
        assert len(bytes.fromhex(o["ID"])) == 16
    usage = [o["Usage"] for o in objects]
    assert usage == ["sign", "verify", "sign", "verify", "decrypt", "encrypt"]
    for o in objects[0::2]:  # private keys
        assert {a.strip() for a in o["Access"].split(",")} >= {"sensitive", "never extractable"}
    ec_public = objects[3]
    # OpenSC 0.26 adds " (OID 1.2.840.10045.3.1.7)" after the hex
    assert ec_public["EC_PARAMS"].split()[0] == P256_OID_DER
    assert ec_public["EC_POINT"] == ec_point_hex(seeded["ec-sign"].public_der)


def test_pkcs11_tool_skips_symmetric_and_disabled_keys(tool_objects, seeded):
    for name in ("symmetric", "disabled"):
        assert ckid(seeded[name]) not in tool_objects.stdout
        assert seeded[name].key_id not in tool_objects.stdout


def test_pkcs11_tool_mechanisms(pkcs11_tool, module_path, env):
    proc = run([pkcs11_tool, "--module", module_path, "-M"], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Supported mechanisms:")


def test_pkcs11_tool_info(pkcs11_tool, module_path, env):
    proc = run([pkcs11_tool, "--module", module_path, "-I"], env)
    assert proc.returncode == 0, proc.stderr
    assert "Cryptoki version 2.40" in proc.stdout
    assert re.search(r"^Manufacturer\s+pkcs11-kms$", proc.stdout, re.M), proc.stdout


@pytest.mark.parametrize("name", ACCEPTANCE)
def test_pkcs11_tool_read_public_key(pkcs11_tool, module_path, env, seeded, tmp_path, name):
    out = tmp_path / f"{name}.der"
    proc = run(
        [pkcs11_tool, "--module", module_path, "--read-object", "--type", "pubkey",
         "--id", ckid(seeded[name]), "-o", str(out)],
        env,
    )
    assert proc.returncode == 0, proc.stderr
    assert_same_public_key(out.read_bytes(), seeded[name].public_der)


def test_pkcs11_tool_login_with_any_pin(pkcs11_tool, module_path, env, expected_objects):
    proc = run([pkcs11_tool, "--module", module_path, "--login", "--pin", "1234", "-O"], env)
    assert proc.returncode == 0, proc.stderr
    objects = parse_pkcs11_tool_objects(proc.stdout)
    assert [(o["kind"], o["label"], o["ID"]) for o in objects] == expected_objects


def test_pkcs11_tool_so_login_fails_cleanly(pkcs11_tool, module_path, env):
    proc = run(
        [pkcs11_tool, "--module", module_path, "--login", "--login-type", "so", "--so-pin", "x",
         "-O"],
        env,
    )
    assert proc.returncode != 0
    assert "C_Login failed" in proc.stderr


def test_pkcs11_tool_test_fork(pkcs11_tool, module_path, env):
    """A forked child calls C_Initialize and must get CKR_OK (docs/design.md, "Fork")."""
    proc = run([pkcs11_tool, "--module", module_path, "--test-fork"], env)
    assert proc.returncode == 0, proc.stderr
    assert "Calling C_Initialize in forked child process" in proc.stdout


def test_pkcs11_tool_generate_random(pkcs11_tool, module_path, env):
    proc = run([pkcs11_tool, "--module", module_path, "--generate-random", "32"], env, text=False)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) == 32


# ---- p11tool (GnuTLS: CKF_LIBRARY_CANT_CREATE_OS_THREADS) ----------------------------------------


@pytest.fixture(scope="module")
def p11tool_list_all(p11tool, module_path, env) -> subprocess.CompletedProcess:
    return run([p11tool, "--provider", module_path, "--list-all"], env)


def test_p11tool_list_all(p11tool_list_all, seeded):
    proc = p11tool_list_all
    assert proc.returncode == 0, proc.stderr
    assert "pkcs11-kms[" not in proc.stderr  # no error or warning logged (C_Finalize included)
    blocks = re.split(r"^Object \d+:\n", proc.stdout, flags=re.M)[1:]
    found = []
    for block in blocks:
        fields = dict(re.findall(r"^\t(\w+): (.*)$", block, re.M))
        found.append((fields["Type"], fields["Label"], fields["ID"]))
        assert "token=acceptance" in fields["URL"]
    web, ecs, dec = seeded["web-tls"], seeded["ec-sign"], seeded["decrypt"]
    assert found == [
        ("Private key (RSA-2048)", "web-tls", colon_id(web)),
        ("Public key (RSA-2048)", "web-tls", colon_id(web)),
        ("Private key (EC/ECDSA-SECP256R1)", ecs.key_id, colon_id(ecs)),
        ("Public key (EC/ECDSA-SECP256R1)", ecs.key_id, colon_id(ecs)),
        ("Private key (RSA-3072)", "decrypt", colon_id(dec)),
        ("Public key (RSA-3072)", "decrypt", colon_id(dec)),
    ]


def test_p11tool_list_tokens(p11tool, module_path, env):
    proc = run([p11tool, "--provider", module_path, "--list-tokens"], env)
    assert proc.returncode == 0, proc.stderr
    assert len(re.findall(r"^Token \d+:$", proc.stdout, re.M)) == 1
    fields = dict(re.findall(r"^\t(\w+): (.*)$", proc.stdout, re.M))
    assert fields["Label"] == "acceptance"
    assert fields["Manufacturer"] == "pkcs11-kms"
    assert "token=acceptance" in fields["URL"]
    assert "manufacturer=pkcs11-kms" in fields["URL"]


@pytest.mark.parametrize("name", ACCEPTANCE)
def test_p11tool_export_pubkey(p11tool, module_path, env, seeded, tmp_path, name):
    key = seeded[name]
    selector = f"id={pct_id(key)}" if name == "decrypt" else f"object={name}"
    if name == "ec-sign":
        selector = f"object={key.key_id}"
    uri = f"pkcs11:token=acceptance;{selector};type=public"
    out = tmp_path / "key.pem"  # without --outfile p11tool sleeps 3 s after a warning
    proc = run([p11tool, "--provider", module_path, "--export-pubkey", uri, "--outfile", str(out)],
               env)
    assert proc.returncode == 0, proc.stderr
    exported = serialization.load_pem_public_key(out.read_bytes())
    der = exported.public_bytes(serialization.Encoding.DER,
                                serialization.PublicFormat.SubjectPublicKeyInfo)
    assert_same_public_key(der, key.public_der)


# ---- NSS (modutil, certutil) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def nssdb(tmp_path_factory, module_path, env):
    """An NSS database with the module added: (db argument, [every command's CompletedProcess])."""
    certutil, modutil = tool("certutil"), tool("modutil")
    db = "sql:" + str(tmp_path_factory.mktemp("nssdb"))
    procs = [
        run([certutil, "-N", "-d", db, "--empty-password"], env, check_stderr=False),
        run([modutil, "-dbdir", db, "-add", "kms", "-libfile", module_path, "-force"], env,
            check_stderr=False),
    ]
    for proc in procs:
        assert proc.returncode == 0, proc.stderr
    return db, procs


@pytest.fixture(scope="module")
def nss_list(nssdb, env):
    db, procs = nssdb
    proc = run([tool("modutil"), "-dbdir", db, "-list"], env, check_stderr=False)
    procs.append(proc)
    return proc


@pytest.fixture(scope="module")
def nss_keys(nssdb, env):
    db, procs = nssdb
    proc = run([tool("certutil"), "-K", "-d", db, "-h", "all"], env, check_stderr=False)
    procs.append(proc)
    return proc


def test_nss_modutil_lists_module(nss_list, module_path):
    assert nss_list.returncode == 0, nss_list.stderr
    section = nss_list.stdout.split("2. kms", 1)[1]
    assert f"library name: {module_path}" in section
    assert "library-manufacturer=pkcs11-kms" in section
    assert "slots: 1 slot attached" in section
    assert "status: loaded" in section
    assert re.search(r"^\s+token: acceptance$", section, re.M), section


def test_nss_certutil_lists_keys(nss_keys, seeded):
    assert nss_keys.returncode == 0, nss_keys.stderr
    section = nss_keys.stdout.split('certutil: Checking token "acceptance"', 1)[1]
    keys = re.findall(r"^<\s*\d+> (\w+)\s+([0-9a-f]+)\s+(.*)$", section, re.M)
    web, ecs, dec = seeded["web-tls"], seeded["ec-sign"], seeded["decrypt"]
    assert sorted(keys) == sorted([
        ("rsa", ckid(web), "web-tls"),
        ("ec", ckid(ecs), ecs.key_id),
        ("rsa", ckid(dec), "decrypt"),
    ])


def test_nss_stderr_has_no_traceback(nssdb, nss_list, nss_keys):
    """NSS and p11tool pass CKF_LIBRARY_CANT_CREATE_OS_THREADS: C_Finalize then closes the KMS
    loop in the calling thread (a CancelledError escaped from there once)."""
    _db, procs = nssdb
    assert len(procs) == 4
    for proc in procs:
        assert "Traceback" not in proc.stderr, f"{proc.args}: {proc.stderr}"
        assert "pkcs11-kms[" not in proc.stderr, f"{proc.args}: {proc.stderr}"


# ---- openssl with the libp11 engine --------------------------------------------------------------


@pytest.fixture(scope="module")
def openssl_env(tmp_path_factory, module_path, env) -> dict[str, str]:
    assert ENGINE.is_file(), f"{ENGINE} missing: install libengine-pkcs11-openssl"
    conf = tmp_path_factory.mktemp("openssl") / "openssl.cnf"
    conf.write_text(
        "openssl_conf = openssl_init\n"
        "[openssl_init]\nengines = engine_section\n"
        "[engine_section]\npkcs11 = pkcs11_section\n"
        "[pkcs11_section]\n"
        "engine_id = pkcs11\n"
        f"dynamic_path = {ENGINE}\n"
        f"MODULE_PATH = {module_path}\n"
        "init = 0\n"
    )
    return dict(env, OPENSSL_CONF=str(conf))


def openssl_uri(key, name: str, how: str, kind: str) -> str:
    if how == "id":
        selector = f"id={pct_id(key)}"
    else:
        selector = f"object={key.key_id if name == 'ec-sign' else name}"
    return f"pkcs11:token=acceptance;{selector};type={kind}"


@pytest.mark.parametrize(
    "name, how, kind",
    [
        ("web-tls", "label", "public"),
        ("ec-sign", "label", "public"),
        ("decrypt", "label", "public"),
        ("ec-sign", "id", "public"),
        ("web-tls", "label", "private"),
        ("ec-sign", "label", "private"),
        ("decrypt", "id", "private"),
    ],
)
def test_openssl_engine_exports_public_key(openssl_env, seeded, name, how, kind):
    uri = openssl_uri(seeded[name], name, how, kind)
    proc = run(
        [tool("openssl"), "pkey", "-engine", "pkcs11", "-inform", "engine", "-in", uri,
         "-pubout", "-outform", "DER"],
        openssl_env, text=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert_same_public_key(proc.stdout, seeded[name].public_der)


# ---- configuration errors and the default lookup -------------------------------------------------


@pytest.mark.parametrize(
    "text, problem",
    [
        ("region = \n[[token]\n", "TOML syntax error: "),
        ('regoin = "eu-west-1"\n',
         "unknown key 'regoin' in the top level (did you mean 'region'?)"),
        ("region = 5\n", "region: must be a string"),
        (None, "no such file (named by $PKCS11_KMS_CONFIG)"),
    ],
    ids=["syntax", "unknown-key", "wrong-type", "missing-file"],
)
def test_config_error_fails_cleanly(pkcs11_tool, module_path, tmp_path, text, problem):
    path = tmp_path / "config.toml"
    if text is not None:
        path.write_text(text)
    env = dict(os.environ, PKCS11_KMS_CONFIG=str(path))
    proc = run([pkcs11_tool, "--module", module_path, "-L"], env)
    assert proc.returncode != 0
    assert "CKR_FUNCTION_FAILED" in proc.stderr
    lines = module_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    match = MODULE_LINE.match(lines[0])
    assert match, lines[0]
    assert match[1] == "ERROR"
    assert match[2].startswith(f"config {path}: {problem}"), lines[0]
    assert "Available slots" not in proc.stdout


def test_default_config_lists_every_usable_key(pkcs11_tool, module_path, kms_server, seeded,
                                               tmp_path):
    assert not Path("/etc/pkcs11-kms/config.toml").exists(), "this machine has a system config"
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PKCS11_KMS_CONFIG", "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), AWS_ENDPOINT_URL_KMS=kms_server.endpoint_url,
               AWS_REGION=os.environ["AWS_REGION"])
    proc = run([pkcs11_tool, "--module", module_path, "-O"], env)
    assert proc.returncode == 0, proc.stderr
    objects = parse_pkcs11_tool_objects(proc.stdout)
    by_id: dict[str, list[dict[str, str]]] = {}
    for o in objects:
        by_id.setdefault(o["ID"], []).append(o)
    for name in ACCEPTANCE:
        pair = by_id.get(ckid(seeded[name]), [])
        assert [o["kind"].split(";")[0] for o in pair] == ["Private Key Object",
                                                         "Public Key Object"], proc.stdout
        assert [o["label"] for o in pair] == [name, name]  # listed keys are labelled by alias
    for name in ("symmetric", "disabled"):
        assert ckid(seeded[name]) not in by_id
        assert seeded[name].key_id not in proc.stdout


@pytest.mark.parametrize("where", ["home", "xdg", "relative-xdg", "empty-variable"])
def test_config_lookup_order(pkcs11_tool, module_path, acceptance_config, tmp_path, where):
    """~/.config/pkcs11-kms/config.toml, or $XDG_CONFIG_HOME/... when that is absolute; an empty
    PKCS11_KMS_CONFIG counts as unset."""
    text = Path(acceptance_config).read_text()
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    (home / ".config" / "pkcs11-kms").mkdir(parents=True)
    (home / ".config" / "pkcs11-kms" / "config.toml").write_text(text)
    (xdg / "pkcs11-kms").mkdir(parents=True)
    (xdg / "pkcs11-kms" / "config.toml").write_text(
        text.replace('label = "acceptance"', 'label = "from-xdg"'))
    env = {k: v for k, v in os.environ.items() if k not in ("PKCS11_KMS_CONFIG", "XDG_CONFIG_HOME")}
    env["HOME"] = str(home)
    expected = "acceptance"
    if where == "xdg":
        env["XDG_CONFIG_HOME"], expected = str(xdg), "from-xdg"
    elif where == "relative-xdg":
        env["XDG_CONFIG_HOME"] = "xdg"  # relative: ignored
    elif where == "empty-variable":
        env["PKCS11_KMS_CONFIG"] = ""
    proc = run([pkcs11_tool, "--module", module_path, "-L"], env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.findall(r"^\s+token label\s+: (.*)$", proc.stdout, re.M) == [expected]


# ---- HTTPS to KMS from inside an OpenSSL host (docs/design.md, "Inside OpenSSL") ----------------


@pytest.fixture(scope="module")
def https_hosts(tmp_path_factory, https_kms_server, module_path):
    """Two signing keys on the HTTPS emulator, a token naming them (with the emulator's CA bundle)
    and an openssl.cnf that auto-loads the libp11 engine on this module."""
    from keyseed import seed_key, write_config

    assert ENGINE.is_file(), f"{ENGINE} missing: install libengine-pkcs11-openssl"
    client = https_kms_server.client()
    keys = {
        "rsa": seed_key(client, None, "RSA_2048", "SIGN_VERIFY"),
        "ec": seed_key(client, None, "ECC_NIST_P256", "SIGN_VERIFY"),
    }
    tmp = tmp_path_factory.mktemp("https")
    body = ('[[token]]\nlabel = "tls"\nkeys = ['
            + ", ".join(f'{{ key = "{k.key_id}", label = "{name}" }}' for name, k in keys.items())
            + "]\n")
    config = write_config(tmp / "config.toml", https_kms_server, "max_attempts = 1\n" + body)
    assert "ca_bundle" in Path(config).read_text()
    conf = tmp / "openssl.cnf"
    conf.write_text(
        "openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n"
        "[engine_section]\npkcs11 = pkcs11_section\n[pkcs11_section]\nengine_id = pkcs11\n"
        f"dynamic_path = {ENGINE}\nMODULE_PATH = {module_path}\ninit = 0\n"
    )
    # The same token without the CA bundle: the emulator's certificate is then untrusted; and
    # without the key cache, which would answer for the keys without a TLS connection.
    untrusted = tmp / "untrusted.toml"
    untrusted.write_text("key_cache = false\n" + "\n".join(
        line for line in Path(config).read_text().splitlines()
        if not line.startswith("ca_bundle")) + "\n")
    env = dict(os.environ, PKCS11_KMS_CONFIG=config, OPENSSL_CONF=str(conf))
    return {"keys": keys, "env": env, "untrusted": str(untrusted), "tmp": tmp}


@pytest.mark.parametrize("name", ["rsa", "ec"])
def test_openssl_https_exports_public_key(https_hosts, name):
    proc = run(
        [tool("openssl"), "pkey", "-engine", "pkcs11", "-inform", "engine", "-in",
         f"pkcs11:token=tls;object={name};type=public", "-pubout", "-outform", "DER"],
        https_hosts["env"], text=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert_same_public_key(proc.stdout, https_hosts["keys"][name].public_der)


@pytest.mark.parametrize("name", ["rsa", "ec"])
def test_openssl_https_signs(https_hosts, name):
    """A SHA-256 digest signed by KMS through openssl's engine (CKM_RSA_PKCS with a DigestInfo;
    CKM_ECDSA), checked by an independent verifier."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    digest = hashes.Hash(hashes.SHA256())
    digest.update(f"signed over HTTPS by {name}".encode())
    digest_file = https_hosts["tmp"] / f"{name}.digest"
    digest_file.write_bytes(digest.finalize())
    signature_file = https_hosts["tmp"] / f"{name}.sig"
    cmd = [tool("openssl"), "pkeyutl", "-engine", "pkcs11", "-keyform", "engine", "-inkey",
           f"pkcs11:token=tls;object={name};type=private", "-sign", "-in", str(digest_file),
           "-out", str(signature_file)]
    if name == "rsa":
        cmd += ["-pkeyopt", "digest:sha256"]
    proc = run(cmd, https_hosts["env"])
    assert proc.returncode == 0, proc.stderr
    public = serialization.load_der_public_key(https_hosts["keys"][name].public_der)
    signature, prehashed = signature_file.read_bytes(), utils.Prehashed(hashes.SHA256())
    if name == "rsa":
        assert len(signature) == 256
        public.verify(signature, digest_file.read_bytes(), padding.PKCS1v15(), prehashed)
    else:
        public.verify(signature, digest_file.read_bytes(), ec.ECDSA(prehashed))


def test_openssl_https_untrusted_certificate_fails_cleanly(https_hosts):
    env = dict(https_hosts["env"], PKCS11_KMS_CONFIG=https_hosts["untrusted"])
    proc = run(
        [tool("openssl"), "pkey", "-engine", "pkcs11", "-inform", "engine", "-in",
         "pkcs11:token=tls;object=rsa;type=public", "-pubout"],
        env,
    )
    assert proc.returncode != 0
    assert "BEGIN PUBLIC KEY" not in proc.stdout
    lines = module_lines(proc.stderr)
    assert lines, proc.stderr
    for line in lines:
        match = MODULE_LINE.match(line)
        assert match and match[1] == "ERROR", line
        assert "GetPublicKey failed" in line and "CERTIFICATE_VERIFY_FAILED" in line, line


# ---- host exit while the module's HTTPS connection closes ----------------------------------------

SLOW_EXIT_SOURCE = r"""
/* LD_PRELOAD: an exit handler that runs after OpenSSL's OPENSSL_cleanup (atexit handlers run in
   reverse order, and libcrypto registers its handler after this constructor), then waits, as an
   exit that has more to clean up would. */
#include <stdlib.h>
#include <unistd.h>
static void slow_exit(void)
{
    const char *ms = getenv("SLOW_EXIT_MS");
    usleep(1000 * (ms ? atoi(ms) : 2000));
}
__attribute__((constructor)) static void init(void) { atexit(slow_exit); }
"""


@pytest.fixture(scope="module")
def slow_exit_preload(tmp_path_factory) -> str:
    gcc = tool("gcc")
    tmp = tmp_path_factory.mktemp("slow-exit")
    (tmp / "slow_exit.c").write_text(SLOW_EXIT_SOURCE)
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(tmp / "slow_exit.so"),
                    str(tmp / "slow_exit.c")], check=True, capture_output=True)
    return str(tmp / "slow_exit.so")


class DelayedCloseProxy:
    """A TCP relay to the HTTPS emulator that passes the server's end of a connection on to the
    client `delay` seconds late - as a server closing an idle keep-alive connection would."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream, self.delay = upstream, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.upstream)
            except OSError:
                return
            threading.Thread(target=self._pump, args=(server, client, self.delay),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(client, server, 0.0), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        time.sleep(delay)
        for sock in (dst, src):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def proxied_https(https_hosts, https_kms_server, tmp_path_factory):
    """A one-key token reached through the delayed-close relay: one KMS request, whose connection
    the server ends 1 s after answering."""
    url = urllib.parse.urlsplit(https_kms_server.endpoint_url)
    proxy = DelayedCloseProxy((url.hostname, url.port), delay=1.0)
    key = https_hosts["keys"]["ec"]
    config = tmp_path_factory.mktemp("proxied") / "config.toml"
    config.write_text(
        f'region = "eu-west-1"\nendpoint_url = "https://127.0.0.1:{proxy.port}"\n'
        f'ca_bundle = "{https_kms_server.ca_bundle}"\nmax_attempts = 1\n'
        f'[[token]]\nlabel = "tls"\nkeys = [{{ key = "{key.key_id}", label = "ec" }}]\n'
    )
    yield dict(https_hosts["env"], PKCS11_KMS_CONFIG=str(config)), key
    proxy.close()


def test_c_finalize_host_survives_connection_closing_at_exit(pkcs11_tool, module_path,
                                                             proxied_https, slow_exit_preload,
                                                             tmp_path):
    """Control for the test below: pkcs11-tool calls C_Finalize, which closes the KMS clients
    before the host exits, so nothing of ours runs during OpenSSL's exit cleanup."""
    env, key = proxied_https
    env = dict(env, LD_PRELOAD=slow_exit_preload, SLOW_EXIT_MS="2000")
    out = tmp_path / "ec.der"
    proc = run([pkcs11_tool, "--module", module_path, "--read-object", "--type", "pubkey",
                "--label", "ec", "-o", str(out)], env)
    assert proc.returncode == 0, proc.stderr
    assert_same_public_key(out.read_bytes(), key.public_der)


def test_openssl_exit_while_a_kms_connection_closes(proxied_https, slow_exit_preload):
    """openssl never calls C_Finalize. When the server ends the module's HTTPS connection while
    openssl's exit handlers run, the KMS loop thread used to free the ssl object after
    OPENSSL_cleanup (PySSL_dealloc -> SSL_free -> EC_KEY_free -> ENGINE_finish on the freed engine
    lock): SIGSEGV in ~10-30% of plain `openssl pkey -engine pkcs11` runs over HTTPS, and in every
    run here. The module now holds the GIL from an exit handler that runs before OpenSSL's."""
    env, key = proxied_https
    env = dict(env, LD_PRELOAD=slow_exit_preload, SLOW_EXIT_MS="2000")
    proc = run(
        [tool("openssl"), "pkey", "-engine", "pkcs11", "-inform", "engine", "-in",
         "pkcs11:token=tls;object=ec;type=public", "-pubout", "-outform", "DER"],
        env, text=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert_same_public_key(proc.stdout, key.public_der)
