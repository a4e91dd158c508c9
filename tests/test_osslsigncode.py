"""osslsigncode: Authenticode-sign a small PE file with a token key (libp11's engine, which
osslsigncode loads for -pkcs11module) and verify it with osslsigncode verify -CAfile.

The PE file is generated here: the smallest valid PE32 console image (headers and one .text
section holding `ret`). The signing certificates are made by the token keys themselves.
Every tool is required: a missing one fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hosts import run, tool
from keyseed import key_entries, seed_key, write_config

ENGINE = Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so")
TOKEN = "codesign"


SECTION_OFFSET = 0x200  # file offset of .text: headers fill the first 0x200 bytes


def minimal_pe() -> bytes:
    """A PE32 (i386, console) image: DOS header -> "PE\\0\\0", COFF header, optional header with
    16 empty data directories, one .text section (RVA 0x1000) whose code is `ret`."""
    dos = bytearray(0x40)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, len(dos))  # e_lfanew: the PE header follows
    coff = struct.pack("<HHIIIHH", 0x14C, 1, 0, 0, 0, 0xE0, 0x0102)  # i386, 1 section, EXE|32BIT
    optional = struct.pack(
        "<HBBIIIIIIIIIHHHHHHIIIIHHIIIIII",
        0x10B, 14, 0,               # PE32 magic, linker version
        0x200, 0, 0,                # sizes of code, initialised and uninitialised data
        0x1000, 0x1000, 0x1000,     # entry point, base of code, base of data
        0x400000, 0x1000, 0x200,    # image base, section alignment, file alignment
        6, 0, 0, 0, 6, 0, 0,        # OS, image and subsystem versions, Win32VersionValue
        0x2000, 0x200, 0,           # size of image, size of headers, checksum (signing sets it)
        3, 0x8140,                  # console subsystem; NX compatible, no SEH, TS aware
        0x100000, 0x1000, 0x100000, 0x1000, 0, 16)  # stack/heap, loader flags, 16 directories
    optional += bytes(16 * 8)
    text = struct.pack("<8sIIIIIIHHI", b".text", 1, 0x1000, 0x200, SECTION_OFFSET, 0, 0, 0, 0,
                       0x60000020)  # code, execute, read
    headers = bytes(dos) + b"PE\0\0" + coff + optional + text
    assert len(headers) <= SECTION_OFFSET
    return headers.ljust(SECTION_OFFSET, b"\0") + b"\xC3".ljust(0x200, b"\0")


@pytest.fixture(scope="module")
def token(https_kms_server, module_path, tmp_path_factory):
    """(env, folder): a token with an RSA and an EC signing key and their self-signed
    code-signing certificates (also on the token, for -pkcs11cert)."""
    assert ENGINE.is_file(), f"{ENGINE} missing: install libengine-pkcs11-openssl"
    folder = tmp_path_factory.mktemp("osslsigncode")
    client = https_kms_server.client()
    keys = {"rsa": seed_key(client, None, "RSA_2048", "SIGN_VERIFY"),
            "ec": seed_key(client, None, "ECC_NIST_P256", "SIGN_VERIFY")}
    entries = key_entries(keys)
    body = f'[[token]]\nlabel = "{TOKEN}"\nkeys = [{entries}]\n'
    config = folder / "config.toml"
    env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"}
    env["PKCS11_KMS_CONFIG"] = write_config(config, https_kms_server, body)
    openssl_conf = folder / "openssl.cnf"
    openssl_conf.write_text(
        "openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n"
        "[engine_section]\npkcs11 = pkcs11_section\n"
        f"[pkcs11_section]\nengine_id = pkcs11\ndynamic_path = {ENGINE}\n"
        f"MODULE_PATH = {module_path}\ninit = 0\n"
        "[req]\ndistinguished_name = req_dn\n[req_dn]\n")
    for label in keys:
        proc = run([tool("openssl"), "req", "-new", "-x509", "-engine", "pkcs11",
                    "-keyform", "engine", "-key", uri(label, "private"),
                    "-subj", f"/CN=pkcs11-kms {label} code signing", "-days", "30", "-sha256",
                    "-addext", "basicConstraints=critical,CA:FALSE",
                    "-addext", "keyUsage=critical,digitalSignature",
                    "-addext", "extendedKeyUsage=codeSigning",
                    "-out", str(folder / f"{label}.pem")],
                   dict(env, OPENSSL_CONF=str(openssl_conf)))
        assert proc.returncode == 0, proc.stderr
    write_config(config, https_kms_server, body + 'certificates = ["rsa.pem", "ec.pem"]\n')
    (folder / "tiny.exe").write_bytes(minimal_pe())
    return env, folder


def uri(label: str, kind: str) -> str:
    return f"pkcs11:token={TOKEN};object={label};type={kind}"


def sign(token, module_path, label: str, out: Path, *certificate: str):
    env, folder = token
    # No -pkcs11engine: osslsigncode then loads libp11's engine by its id from OpenSSL's engine
    # directory. (`-pkcs11engine <path>` works with osslsigncode 2.9 but not with Debian 12's 2.5:
    # "bad engine id", "dynamic_load:init failed" - with any PKCS#11 module.)
    return run([tool("osslsigncode"), "sign",
                "-pkcs11module", module_path, *certificate, "-key", uri(label, "private"),
                "-h", "sha256", "-n", "pkcs11-kms test", "-i", "https://example.com/",
                "-in", str(folder / "tiny.exe"), "-out", str(out)], env)


def verify(env, signed: Path, ca: Path):
    return run([tool("osslsigncode"), "verify", "-CAfile", str(ca), "-in", str(signed)], env)


def test_minimal_pe_is_accepted_unsigned(token):
    env, folder = token
    proc = run([tool("osslsigncode"), "verify", "-in", str(folder / "tiny.exe")], env)
    assert "No signature found" in proc.stdout + proc.stderr  # parsed as PE, just not signed


@pytest.mark.parametrize("label", ["rsa", "ec"])
def test_sign_and_verify(token, module_path, tmp_path, label):
    env, folder = token
    signed = tmp_path / "signed.exe"
    proc = sign(token, module_path, label, signed, "-certs", str(folder / f"{label}.pem"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Succeeded" in proc.stdout
    checked = verify(env, signed, folder / f"{label}.pem")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Signature verification: ok" in checked.stdout
    assert "Number of verified signatures: 1" in checked.stdout
    assert f"Subject: /CN=pkcs11-kms {label} code signing" in checked.stdout
    # Another CA does not vouch for it, and a changed byte of code breaks it.
    other = "ec" if label == "rsa" else "rsa"
    assert verify(env, signed, folder / f"{other}.pem").returncode != 0
    tampered = tmp_path / "tampered.exe"
    data = bytearray(signed.read_bytes())
    data[SECTION_OFFSET] ^= 0x01
    tampered.write_bytes(bytes(data))
    broken = verify(env, tampered, folder / f"{label}.pem")
    assert broken.returncode != 0
    assert "MISMATCH" in broken.stdout


def test_sign_with_certificate_from_token(token, module_path, tmp_path):
    """-pkcs11cert: the certificate comes from the token (the config's `certificates`)."""
    env, folder = token
    signed = tmp_path / "signed.exe"
    proc = sign(token, module_path, "rsa", signed, "-pkcs11cert", uri("rsa", "cert"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checked = verify(env, signed, folder / "rsa.pem")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Signature verification: ok" in checked.stdout
