"""OpenSSH with the module: ssh-keygen -D shows the token's keys, and ssh logs in to a throwaway
sshd on 127.0.0.1 with RSA and ECDSA token keys, directly (PKCS11Provider / -I) and through
ssh-agent, which loads the module in ssh-pkcs11-helper, a process of its own that inherits the
agent's environment (PKCS11_KMS_CONFIG, AWS_*).

sshd runs as root (this sandbox) with its own host key and config, StrictModes no and UsePAM no.
Every tool is required: a missing one fails the test instead of skipping it.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hosts import free_port, run, tool
from keyseed import key_entries, seed_key, write_config

TOKEN = "ssh"
KEYS = {"rsa": "RSA_2048", "ec": "ECC_NIST_P256", "ec384": "ECC_NIST_P384"}
SSH_TYPES = {"rsa": "ssh-rsa", "ec": "ecdsa-sha2-nistp256", "ec384": "ecdsa-sha2-nistp384"}


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}: {log.read_text()}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}: {log.read_text()}")


def stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def public_line(line: str) -> tuple[str, str]:
    kind, blob, *_ = line.split()
    return kind, blob


@pytest.fixture(scope="module")
def token(https_kms_server, tmp_path_factory):
    """(env, keys, folder) for a token with RSA-2048, P-256 and P-384 signing keys."""
    folder = tmp_path_factory.mktemp("ssh")
    client = https_kms_server.client()
    keys = {label: seed_key(client, None, spec, "SIGN_VERIFY") for label, spec in KEYS.items()}
    entries = key_entries(keys)
    config = write_config(folder / "config.toml", https_kms_server,
                          f'[[token]]\nlabel = "{TOKEN}"\nkeys = [{entries}]\n')
    return dict(os.environ, PKCS11_KMS_CONFIG=config), keys, folder


@pytest.fixture(scope="module")
def kms_openssh_keys(token) -> dict[str, str]:
    """KMS's public keys in OpenSSH form, converted by ssh-keygen -i -m PKCS8."""
    env, keys, folder = token
    converted = {}
    for label, key in keys.items():
        pem = folder / f"{label}.pub.pem"
        pem.write_bytes(serialization.load_der_public_key(key.public_der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        proc = run([tool("ssh-keygen"), "-i", "-m", "PKCS8", "-f", str(pem)], env)
        assert proc.returncode == 0, proc.stderr
        converted[label] = proc.stdout.strip()
    return converted


@pytest.fixture(scope="module")
def keygen_listing(token, module_path) -> subprocess.CompletedProcess:
    env = token[0]
    return run([tool("ssh-keygen"), "-D", module_path], env)


def test_ssh_keygen_lists_token_public_keys(keygen_listing, kms_openssh_keys):
    proc = keygen_listing
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    by_comment = {line.split()[2]: public_line(line) for line in lines}
    assert len(lines) == len(KEYS)
    for label, expected in kms_openssh_keys.items():
        assert by_comment[label] == public_line(expected), label  # the label is the comment
        assert by_comment[label][0] == SSH_TYPES[label]


@pytest.fixture(scope="module")
def sshd(token, tmp_path_factory):
    """A throwaway sshd on 127.0.0.1 trusting the keys written to its authorized_keys file.
    Yields (port, known_hosts, authorized_keys, log)."""
    assert os.geteuid() == 0, "sshd needs root to log a user in; this test runs as root in CI"
    env = token[0]
    folder = tmp_path_factory.mktemp("sshd")
    host_key = folder / "host_ed25519"
    proc = run([tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], env)
    assert proc.returncode == 0, proc.stderr
    port = free_port()
    authorized = folder / "authorized_keys"
    authorized.write_text("")
    log = folder / "sshd.log"
    config = folder / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\n"
        f"PidFile {folder / 'sshd.pid'}\nAuthorizedKeysFile {authorized}\n"
        "StrictModes no\nUsePAM no\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "LogLevel VERBOSE\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    sshd_path = tool("sshd")
    check = run([sshd_path, "-t", "-f", str(config)], env)
    assert check.returncode == 0, check.stderr
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {(folder / 'host_ed25519.pub').read_text()}")
    process = None
    try:
        with open(log, "w") as out:
            process = subprocess.Popen([sshd_path, "-D", "-e", "-f", str(config)], stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env)
        wait_for_port(port, process, log)
        yield port, known_hosts, authorized, log
    finally:
        stop(process)


def ssh_command(port: int, known_hosts: Path, *options: str) -> list[str]:
    return [tool("ssh"), "-F", "none", "-p", str(port), "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=20", *options, f"{getpass.getuser()}@127.0.0.1", "echo", "ok"]


def accepted_fingerprints(log: Path) -> list[str]:
    return re.findall(r"Accepted publickey for \S+ from 127\.0\.0\.1 port \d+ ssh2: \S+ (\S+)",
                      log.read_text())


def fingerprint(line: str, env) -> str:
    proc = run([tool("ssh-keygen"), "-l", "-f", "-"], env, stdin=None, input=line + "\n")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[1]


@pytest.mark.parametrize("label, how", [("rsa", "option"), ("ec", "option"), ("ec384", "-I")])
def test_ssh_login_with_token_key(token, sshd, kms_openssh_keys, module_path, label, how):
    env = token[0]
    port, known_hosts, authorized, log = sshd
    authorized.write_text(kms_openssh_keys[label] + "\n")  # only this key is trusted
    provider = ["-o", f"PKCS11Provider={module_path}"] if how == "option" else ["-I", module_path]
    before = len(accepted_fingerprints(log))
    proc = run(ssh_command(port, known_hosts, "-o", "IdentityAgent=none", *provider), env)
    assert (proc.returncode, proc.stdout) == (0, "ok\n"), proc.stderr
    accepted = accepted_fingerprints(log)[before:]
    assert accepted == [fingerprint(kms_openssh_keys[label], env)], log.read_text()


def start_agent(env, tmp_path: Path, *options: str):
    """ssh-agent in the foreground on its own socket. Returns (process, client env, log)."""
    socket_path = tmp_path / "agent.sock"
    askpass = tmp_path / "askpass"
    askpass.write_text("#!/bin/sh\necho\n")  # ssh-add -s always asks for a PIN: give an empty one
    askpass.chmod(0o755)
    agent_log = tmp_path / "agent.log"
    with open(agent_log, "w") as out:
        agent = subprocess.Popen([tool("ssh-agent"), "-D", "-a", str(socket_path), *options],
                                 stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env)
    deadline = time.monotonic() + 10
    while not socket_path.exists():
        if agent.poll() is not None or time.monotonic() > deadline:
            stop(agent)
            raise AssertionError(f"ssh-agent did not start: {agent_log.read_text()}")
        time.sleep(0.05)
    client_env = {k: v for k, v in env.items() if k != "PKCS11_KMS_CONFIG"}
    client_env.update(SSH_AUTH_SOCK=str(socket_path), SSH_ASKPASS=str(askpass),
                      SSH_ASKPASS_REQUIRE="force", DISPLAY="")
    return agent, client_env, agent_log


def test_ssh_agent_refuses_module_outside_allowlist(token, module_path, tmp_path):
    """ssh-agent loads PKCS#11 modules only from /usr/lib*/ and /usr/local/lib*/ unless -P
    allows more: a module in a virtual environment needs `ssh-agent -P <path>` (OpenSSH)."""
    agent, client_env, _agent_log = start_agent(token[0], tmp_path)
    try:
        added = run([tool("ssh-add"), "-s", module_path], client_env)
        assert added.returncode != 0
        assert "agent refused operation" in added.stderr
    finally:
        stop(agent)


def test_ssh_agent_loads_module_in_helper(token, sshd, kms_openssh_keys, module_path, tmp_path):
    """ssh-add -s asks the agent to load the module; the agent's ssh-pkcs11-helper inherits the
    agent's environment, so the agent is started with PKCS11_KMS_CONFIG and the AWS variables
    (ssh-add's own environment does not have PKCS11_KMS_CONFIG here)."""
    env = token[0]
    port, known_hosts, authorized, log = sshd
    authorized.write_text(kms_openssh_keys["rsa"] + "\n" + kms_openssh_keys["ec"] + "\n")
    agent, client_env, agent_log = start_agent(env, tmp_path, "-P", module_path)
    socket_path = client_env["SSH_AUTH_SOCK"]
    try:
        added = run([tool("ssh-add"), "-s", module_path], client_env)
        assert added.returncode == 0, added.stderr + agent_log.read_text()
        listed = run([tool("ssh-add"), "-L"], client_env)
        assert listed.returncode == 0, listed.stderr
        assert sorted(public_line(line) for line in listed.stdout.strip().splitlines()) == sorted(
            public_line(line) for line in kms_openssh_keys.values())
        before = len(accepted_fingerprints(log))
        proc = run(ssh_command(port, known_hosts, "-o", f"IdentityAgent={socket_path}"),
                   client_env)
        assert (proc.returncode, proc.stdout) == (0, "ok\n"), proc.stderr + agent_log.read_text()
        assert accepted_fingerprints(log)[before:] == [fingerprint(kms_openssh_keys["rsa"], env)]
    finally:
        stop(agent)
