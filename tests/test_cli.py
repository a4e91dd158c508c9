"""The `pkcs11-kms` command: module-path, keys (URIs checked with pkcs11-tool and p11tool), doctor
(healthy, endpoint down, disabled key, no credentials, untrusted TLS) and emulator."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from hosts import free_port, tool
from keyseed import seed_key, write_config

CLI = [sys.executable, "-m", "pkcs11_kms"]
NOBODY = 65534


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
        config: str | None = None) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ if env is None else env)
    if config is not None:
        environ["PKCS11_KMS_CONFIG"] = config
    proc = subprocess.run([*CLI, *args], env=environ, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def listening(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on `port` (/proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # TCP_LISTEN
                raw = bytes.fromhex(address)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6,
                                           words))
    return found


# ---- module-path --------------------------------------------------------------------------------


def test_module_path_prints_one_absolute_path(module_path):
    proc = cli("module-path")
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and proc.stdout == lines[0] + "\n"
    assert os.path.isabs(lines[0]) and lines[0] == module_path


def test_module_path_stays_instant():
    """Parsing the command line imports no AWS, ASN.1 or crypto library, nor the module core."""
    code = ("import sys, pkcs11_kms.cli as c; c._parser().parse_args(['module-path']); "
            "print([m for m in sys.modules if m.split('.')[0] in "
            "('botocore', 'aiobotocore', 'asn1crypto', 'cryptography', 'moto', 'cffi') "
            "or m.startswith(('pkcs11_kms.tools', 'pkcs11_kms.core', 'pkcs11_kms.kms'))])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


# ---- keys ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def listing(acceptance_config):
    proc = cli("keys", "--json", config=acceptance_config)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_keys_json_lists_tokens_keys_and_uris(listing, seeded, acceptance_config):
    assert listing["config"] == acceptance_config
    [token] = listing["tokens"]
    assert token["label"] == "acceptance" and token["error"] is None
    assert token["uri"] == "pkcs11:token=acceptance"
    by_id = {k["key_id"]: k for k in token["keys"]}
    expected = {
        "web-tls": ("web-tls", "RSA_2048", "SIGN_VERIFY", "sign"),
        "ec-sign": (seeded["ec-sign"].key_id, "ECC_NIST_P256", "SIGN_VERIFY", "sign"),
        "decrypt": ("decrypt", "RSA_3072", "ENCRYPT_DECRYPT", "decrypt"),
    }
    assert set(by_id) == {seeded[a].key_id for a in expected}
    for alias, (label, spec, usage, operation) in expected.items():
        key = by_id[seeded[alias].key_id]
        assert (key["label"], key["key_spec"], key["key_usage"], key["operation"]) == (
            label, spec, usage, operation)
        assert key["cka_id"] == seeded[alias].key_id.replace("-", "")
        assert key["arn"] == seeded[alias].arn
        pct = "".join(f"%{b:02x}" for b in bytes.fromhex(key["cka_id"]))
        assert key["uris"]["private_by_id"] == f"pkcs11:token=acceptance;id={pct};type=private"
        assert key["uris"]["private"] == f"pkcs11:token=acceptance;object={label};type=private"
        assert key["uris"]["public"] == f"pkcs11:token=acceptance;object={label};type=public"


def test_keys_human_output_and_list_alias(acceptance_config, seeded):
    proc = cli("list", config=acceptance_config)
    assert proc.returncode == 0, proc.stderr
    assert f"config: {acceptance_config}" in proc.stdout
    assert "token 'acceptance'" in proc.stdout
    assert "pkcs11:token=acceptance;object=web-tls;type=private" in proc.stdout
    assert "pkcs11:token=acceptance;object=decrypt;type=public" in proc.stdout
    assert f"CKA_ID {seeded['decrypt'].key_id.replace('-', '')}" in proc.stdout


def test_keys_uris_work_with_pkcs11_tool_and_p11tool(listing, seeded, module_path, tmp_path,
                                                      acceptance_config):
    """CKA_ID with pkcs11-tool for every key; each kind of URI with p11tool (GnuTLS's parser)."""
    env = {**os.environ, "PKCS11_KMS_CONFIG": acceptance_config}
    keys = {alias: next(k for k in listing["tokens"][0]["keys"]
                        if k["key_id"] == seeded[alias].key_id)
            for alias in ("web-tls", "ec-sign", "decrypt")}
    for alias, key in keys.items():
        out = tmp_path / f"{alias}.der"
        subprocess.run([tool("pkcs11-tool"), "--module", module_path, "--read-object",
                        "--type", "pubkey", "--id", key["cka_id"], "-o", str(out)],
                       env=env, check=True, capture_output=True, timeout=60)
        assert out.read_bytes() == seeded[alias].public_der
    for alias, name in (("web-tls", "public"), ("ec-sign", "public_by_id")):
        proc = subprocess.run([tool("p11tool"), "--provider", module_path, "--export",
                               keys[alias]["uris"][name]], env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        public = serialization.load_pem_public_key(proc.stdout.encode())
        assert public.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo
                                   ) == seeded[alias].public_der
    proc = subprocess.run([tool("p11tool"), "--provider", module_path, "--list-privkeys",
                           keys["decrypt"]["uris"]["private"]],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Label: decrypt" in proc.stdout and proc.stdout.count("Type: Private key") == 1


def test_keys_shows_the_certificate_of_a_key(tmp_path, kms_server, seeded):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web.example")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(serialization.load_der_public_key(seeded["web-tls"].public_der))
            .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(1))
            .sign(ca_key, hashes.SHA256()))
    (tmp_path / "web.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    config = write_config(tmp_path / "certs.toml", kms_server,
                          '[[token]]\nlabel = "web"\nkeys = ["alias/web-tls"]\n'
                          'certificates = ["web.pem"]\n')
    proc = cli("keys", "--json", "--config", config)
    assert proc.returncode == 0, proc.stderr
    [key] = json.loads(proc.stdout)["tokens"][0]["keys"]
    pct = "".join(f"%{b:02x}" for b in bytes.fromhex(key["cka_id"]))
    assert key["certificate"] == "Common Name: web.example"
    assert key["uris"]["certificate"] == f"pkcs11:token=web;id={pct};type=cert"


def test_keys_reports_a_config_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('regoin = "eu-west-1"\n')
    proc = cli("keys", "--config", str(bad))
    assert proc.returncode == 2
    assert f"config {bad}: unknown key 'regoin'" in proc.stderr
    assert "did you mean 'region'" in proc.stderr
    proc = cli("keys", "--config", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "no such file" in proc.stderr


# ---- doctor -------------------------------------------------------------------------------------


def test_doctor_passes_against_a_healthy_emulator(acceptance_config, kms_server):
    proc = cli("doctor", config=acceptance_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "✗" not in out
    for line in (f"✓ config: {acceptance_config}", "✓ region: eu-west-1 (config)",
                 "✓ credentials: found (environment variables)",
                 f"✓ endpoint: {kms_server.endpoint_url} reachable",
                 "✓ key alias/web-tls (web-tls): RSA_2048 SIGN_VERIFY, kms:Sign allowed (DryRun)",
                 "ENCRYPT_DECRYPT, kms:Decrypt allowed (DryRun)",
                 "✓ everything is usable: 3 keys"):
        assert line in out, out


def test_doctor_checks_every_key_type(tmp_path, kms_server):
    """Ed25519, ML-DSA, HMAC (no public key: DescribeKey) and key agreement keys, each with a
    DryRun of the operation the module uses."""
    client = kms_server.client()
    keys = {name: seed_key(client, None, spec, usage) for name, spec, usage in (
        ("ed", "ECC_NIST_EDWARDS25519", "SIGN_VERIFY"), ("pq", "ML_DSA_44", "SIGN_VERIFY"),
        ("mac", "HMAC_256", "GENERATE_VERIFY_MAC"), ("dh", "ECC_NIST_P384", "KEY_AGREEMENT"))}
    entries = ", ".join(f'{{ key = "{k.arn}", label = "{n}" }}' for n, k in keys.items())
    config = write_config(tmp_path / "c.toml", kms_server, f'[[token]]\nkeys = [{entries}]\n')
    proc = cli("doctor", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for expected in ("ECC_NIST_EDWARDS25519 SIGN_VERIFY, kms:Sign allowed (DryRun)",
                     "ML_DSA_44 SIGN_VERIFY, kms:Sign allowed (DryRun)",
                     "HMAC_256 GENERATE_VERIFY_MAC, kms:GenerateMac allowed (DryRun)",
                     "ECC_NIST_P384 KEY_AGREEMENT, kms:DeriveSharedSecret allowed (DryRun)",
                     "everything is usable: 4 keys"):
        assert expected in proc.stdout, proc.stdout


def test_doctor_over_https_checks_the_ca(tmp_path, https_kms_server):
    good = write_config(tmp_path / "good.toml", https_kms_server,
                        '[[token]]\nlabel = "t"\nalias_prefix = "alias/nothing-"\n')
    proc = cli("doctor", "--config", good)
    assert "TLSv1.3, certificate verified with" in proc.stdout, proc.stdout
    assert "✗ listing keys: no usable key matching alias prefix alias/nothing-" in proc.stdout
    assert proc.returncode == 1
    untrusted = tmp_path / "untrusted.toml"
    untrusted.write_text(
        f'region = "eu-west-1"\nendpoint_url = "{https_kms_server.endpoint_url}"\n')
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    proc = cli("doctor", "--config", str(untrusted), env=env)
    assert proc.returncode == 1
    assert "certificate not trusted" in proc.stdout and "set ca_bundle" in proc.stdout


def test_doctor_fails_when_the_endpoint_is_down(tmp_path):
    port = free_port()
    config = tmp_path / "down.toml"
    config.write_text(f'region = "eu-west-1"\nendpoint_url = "http://127.0.0.1:{port}"\n'
                      '[[token]]\nlabel = "t"\nkeys = ["alias/web-tls"]\n')
    start = time.monotonic()
    proc = cli("doctor", "--config", str(config), "--timeout", "2")
    assert time.monotonic() - start < 20
    assert proc.returncode == 1
    assert f"✗ endpoint: http://127.0.0.1:{port}: Connection refused" in proc.stdout
    assert "→ fix:" in proc.stdout and "keys: not checked" in proc.stdout


def test_doctor_fails_on_a_disabled_key(tmp_path, kms_server, seeded):
    config = write_config(tmp_path / "disabled.toml", kms_server,
                          '[[token]]\nlabel = "t"\nkeys = ["alias/web-tls", "alias/disabled"]\n')
    proc = cli("doctor", "--config", config)
    assert proc.returncode == 1
    assert "✓ key alias/web-tls" in proc.stdout
    assert "✗ key alias/disabled (disabled): GetPublicKey: DisabledException" in proc.stdout
    assert "enable it (aws kms enable-key --key-id alias/disabled)" in proc.stdout
    assert "✗ 1 problem" in proc.stdout


def test_doctor_fails_without_credentials(tmp_path, acceptance_config):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_ACCESS", "AWS_SECRET", "AWS_SESSION", "AWS_CONTAINER",
                                "AWS_WEB_IDENTITY", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"))}
    env.update(AWS_EC2_METADATA_DISABLED="true",
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
               AWS_CONFIG_FILE=str(tmp_path / "no-config"))
    start = time.monotonic()
    proc = cli("doctor", env=env, config=acceptance_config)
    assert time.monotonic() - start < 20
    assert proc.returncode == 1
    assert "✗ credentials: none found" in proc.stdout
    assert "AWS_ACCESS_KEY_ID" in proc.stdout  # what to set
    assert "testing" not in proc.stdout + proc.stderr  # no credential values, ever


def test_doctor_reports_a_bad_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[token]]\nkeys = []\n")
    proc = cli("doctor", "--config", str(bad))
    assert proc.returncode == 1
    assert f"✗ config: config {bad}: [[token]] #1: keys: is empty" in proc.stdout


@pytest.fixture
def install(tmp_path, module_path):
    """A fresh installation: a virtual environment with a copy of the package (the library
    included) in its site-packages, and the test environment's dependencies through a .pth."""
    import site

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120, capture_output=True)
    [packages] = venv.glob("lib/python3*/site-packages")
    shutil.copytree(Path(module_path).parent, packages / "pkcs11_kms",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (packages / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv, packages / "pkcs11_kms"


def test_doctor_checks_the_installation(install, acceptance_config, kms_server):
    """The library, its package and its Python environment: another user must not be able to
    change them (docs/security.md, "The installation")."""
    venv, package = install
    library = package / "libkms-pkcs11.so"
    python = str(venv / "bin" / "python")

    def doctor() -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PKCS11_KMS_CONFIG": acceptance_config}
        proc = subprocess.run([python, "-m", "pkcs11_kms", "doctor"], env=env, timeout=120,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              cwd=venv)  # not the checkout's pkcs11_kms (-m imports from cwd)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    clean = doctor()
    assert f"✓ installation: {library}, its package and its Python environment ({venv}) " \
           "can be changed only by root" in clean.stdout, clean.stdout
    assert clean.returncode == 0, clean.stdout

    (package / "core" / "operations.py").chmod(0o664)
    (package / "kms").chmod(0o777)
    library.chmod(0o646)
    os.chown(venv / "pyvenv.cfg", NOBODY, NOBODY)
    changed = doctor()
    out = changed.stdout
    assert changed.returncode == 1, out
    lines = [line for line in out.splitlines() if line.startswith("✗ installation")]
    assert len(lines) == 3, out
    library_line, package_line, python_line = lines
    assert library_line == (f"✗ installation: library: {library} is writable by other users "
                            f"(mode 0646): chmod go-w {library}")
    assert package_line.startswith("✗ installation: package: ")
    assert f"{package}/core/operations.py is writable by other users (mode 0664)" in out \
        or f"{package}/kms is writable by other users (mode 0777)" in out
    assert package_line.endswith(" (and 1 more)")  # operations.py and kms/
    assert python_line == (f"✗ installation: Python environment: {venv}/pyvenv.cfg belongs to "
                           f"nobody, who could change it: it must belong to root "
                           f"(chown root {venv}/pyvenv.cfg)")
    assert out.count("→ fix: every program that loads the library runs this code: install "
                     "pkcs11-kms as root") == 3, out
    assert "✓ config:" in out  # the other checks still run


# ---- emulator -----------------------------------------------------------------------------------


def test_emulator_command_runs_writes_a_working_config_and_stops(tmp_path, module_path):
    state = tmp_path / "state"
    port = free_port()
    proc = subprocess.Popen([*CLI, "emulator", "--dir", str(state), "--tls", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"the emulator exited: {proc.stderr.read()}"
            lines.append(line.rstrip("\n"))
            if line.startswith("# then:"):
                break
        text = "\n".join(lines)
        assert f"# KMS emulator: https://127.0.0.1:{port}" in text
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", text, re.M))
        config = state / "config.toml"
        assert exports["PKCS11_KMS_CONFIG"] == str(config)
        assert exports["AWS_EC2_METADATA_DISABLED"] == "true"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(exports)
        assert (state / "tls" / "ca.pem").is_file()
        assert stat.S_IMODE((state / "tls" / "server.key").stat().st_mode) == 0o600
        assert listening(port) == {"127.0.0.1"}  # loopback only
        assert f"export PKCS11_KMS_CONFIG={config}" in (state / "env.sh").read_text()
        assert all(not line or line.startswith(("#", "export ", "unset ")) for line in lines)

        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(exports)
        listed = subprocess.run([tool("pkcs11-tool"), "--module", module_path, "-O"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        labels = re.findall(r"Private Key Object; (\w+).*?\n\s+label:\s+(\S+)", listed.stdout, re.S)
        assert labels == [("RSA", "demo-rsa"), ("EC", "demo-ec"), ("RSA", "demo-decrypt")]
        doctor = cli("doctor", env=env)
        assert doctor.returncode == 0, doctor.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=20)
    assert status == 0, proc.stderr.read()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # Run again in the same directory: the CA is kept, the config is rewritten.
    ca = (state / "tls" / "ca.pem").read_bytes()
    again = subprocess.Popen([*CLI, "emulator", "--dir", str(state), "--tls"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert again.stdout.readline().startswith("# KMS emulator: https://127.0.0.1:")
    finally:
        again.send_signal(signal.SIGINT)
        assert again.wait(timeout=20) == 0
    assert (state / "tls" / "ca.pem").read_bytes() == ca
    endpoint = urlsplit(re.search(r'endpoint_url = "(.*)"', config.read_text())[1])
    assert endpoint.port != port
