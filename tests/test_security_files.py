"""Files another user could change are refused (docs/security.md, "Files"): the config file,
certificate files, the CA bundle and the log file, and the directories they are in, checked the
way ssh's StrictModes does. C_Initialize of the real library, from a C host, then fails with
CKR_FUNCTION_FAILED and one line naming the file and the fix. The log file is never a symbolic
link and is created with mode 0600."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hosts import build_c_host, run

from pkcs11_kms import logs

NOBODY = 65534
CKR_FUNCTION_FAILED = "0x6"


@pytest.fixture(scope="module")
def secure_host(tmp_path_factory) -> str:
    return build_c_host("secure_host", tmp_path_factory.mktemp("host"))


@pytest.fixture
def folder():
    """A directory of root's in /tmp (sticky): the files a case makes, modes as the case says."""
    assert os.geteuid() == 0, "the cases chown files to nobody; CI runs the tests as root"
    path = Path(tempfile.mkdtemp(prefix="pkcs11-kms-files-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def initialize(secure_host: str, module_path: str, config: Path) -> tuple[str, list[str]]:
    """C_Initialize's CK_RV with `config` as PKCS11_KMS_CONFIG, and the module's ERROR lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKCS11_KMS")}
    env["PKCS11_KMS_CONFIG"] = str(config)
    proc = run([secure_host, module_path], env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rv = re.search(r"^C_Initialize (\S+)$", proc.stdout, re.MULTILINE)
    assert rv, proc.stdout
    return rv[1], [line for line in proc.stderr.splitlines() if " ERROR " in line]


def write(path: Path, text: str = "", mode: int = 0o644, uid: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    os.chown(path, uid, -1)
    return path


# Each case: (name, set-up(folder) -> (config, the file to name in the complaint), the fix).
def _config_writable(d: Path):
    return (c := write(d / "config.toml", mode=0o666)), c, f"chmod go-w {c}"


def _config_group_writable(d: Path):
    return (c := write(d / "config.toml", mode=0o664)), c, f"chmod go-w {c}"


def _config_of_another_user(d: Path):
    return (c := write(d / "config.toml", uid=NOBODY)), c, "belongs to nobody"


def _directory_writable(d: Path):
    (d / "open").mkdir(mode=0o777)
    (d / "open").chmod(0o777)
    c = write(d / "open" / "config.toml")
    return c, d / "open", f"chmod go-w {d / 'open'}"


def _directory_of_another_user(d: Path):
    (d / "theirs").mkdir()
    os.chown(d / "theirs", NOBODY, NOBODY)
    c = write(d / "theirs" / "config.toml")
    return c, d / "theirs", "belongs to nobody"


def _another_users_file_in_sticky_directory(d: Path):
    (d / "shared").mkdir()
    (d / "shared").chmod(0o1777)
    c = write(d / "shared" / "config.toml", uid=NOBODY)
    return c, c, "belongs to nobody"


def _symlink_into_writable_directory(d: Path):
    (d / "open").mkdir()
    (d / "open").chmod(0o777)
    write(d / "open" / "real.toml")
    (d / "config.toml").symlink_to(d / "open" / "real.toml")
    return d / "config.toml", d / "open", f"chmod go-w {d / 'open'}"


def _certificate_writable(d: Path):
    p = write(d / "cert.pem", "-----BEGIN CERTIFICATE-----\n", mode=0o666)
    return write(d / "config.toml", '[[token]]\ncertificates = ["cert.pem"]\n'), p, f"chmod go-w {p}"


def _ca_bundle_writable(d: Path):
    p = write(d / "ca.pem", "", mode=0o646)
    return write(d / "config.toml", 'ca_bundle = "ca.pem"\n'), p, f"chmod go-w {p}"


def _log_file_writable(d: Path):
    p = write(d / "kms.log", "", mode=0o622)
    return write(d / "config.toml", 'log_file = "kms.log"\n'), p, f"chmod go-w {p}"


def _log_file_in_writable_directory(d: Path):
    (d / "logs").mkdir()
    (d / "logs").chmod(0o777)
    return (write(d / "config.toml", 'log_file = "logs/kms.log"\n'), d / "logs",
            f"chmod go-w {d / 'logs'}")


def _log_file_symlink(d: Path):
    write(d / "elsewhere.log")
    (d / "kms.log").symlink_to(d / "elsewhere.log")
    return (write(d / "config.toml", 'log_file = "kms.log"\n'), d / "kms.log",
            "is a symbolic link")


CASES = [_config_writable, _config_group_writable, _config_of_another_user, _directory_writable,
         _directory_of_another_user, _another_users_file_in_sticky_directory,
         _symlink_into_writable_directory, _certificate_writable, _ca_bundle_writable,
         _log_file_writable, _log_file_in_writable_directory, _log_file_symlink]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.strip("_"))
def test_refused(secure_host, module_path, folder, case):
    config, named, fix = case(folder)
    rv, errors = initialize(secure_host, module_path, config)
    assert rv == CKR_FUNCTION_FAILED, errors
    assert len(errors) == 1, errors
    assert f"config {config}: " in errors[0] and "refused: " in errors[0]
    assert str(named) in errors[0] and fix in errors[0], errors[0]
    assert 'docs/security.md, "Files"' in errors[0]


def test_the_same_files_trusted_are_used(secure_host, module_path, folder):
    """Every kind of file of the cases above, as the docs ask: the module starts."""
    (folder / "shared").mkdir()
    (folder / "shared").chmod(0o1777)  # sticky: an entry of ours or root's is fine
    (folder / "logs").mkdir(mode=0o700)
    write(folder / "cert.pem", "")
    write(folder / "ca.pem", "")
    real = write(folder / "shared" / "real.toml",
                 f'ca_bundle = "{folder}/ca.pem"\n'
                 f'log_file = "{folder}/logs/kms.log"\nlog_level = "info"\n'
                 f'[[token]]\ncertificates = ["{folder}/cert.pem"]\n', mode=0o600)
    (folder / "config.toml").symlink_to(real)
    rv, errors = initialize(secure_host, module_path, folder / "config.toml")
    assert rv == "0", errors
    log = folder / "logs" / "kms.log"
    assert log.stat().st_mode & 0o777 == 0o600  # created 0600, whatever the umask
    assert log.stat().st_uid == 0


def test_log_file_created_0600_and_never_through_a_symlink(tmp_path, capfd):
    """logs.configure itself (the config check aside): O_CREAT with mode 0600, O_NOFOLLOW."""
    logger = logging.getLogger("pkcs11_kms")
    state = logger.level, logger.propagate, list(logger.handlers)
    old = os.umask(0)  # a host with a careless umask
    try:
        created = tmp_path / "new.log"
        logs.configure("info", str(created), {})
        logger.info("to the file")
        assert created.stat().st_mode & 0o777 == 0o600
        assert "to the file" in created.read_text()

        target = write(tmp_path / "target", "", mode=0o644)  # a file we would trust
        (tmp_path / "link.log").symlink_to(target)
        logs.configure("info", str(tmp_path / "link.log"), {})
        logger.info("not through the link")
        assert target.read_text() == ""
        err = capfd.readouterr().err
        assert "cannot open log file" in err and "not through the link" in err

        theirs = tmp_path / "theirs.log"
        write(theirs, "", mode=0o600, uid=NOBODY)
        logs.configure("info", str(theirs), {})
        logger.info("not into another user's file")
        assert theirs.read_text() == ""
        assert "belongs to nobody" in capfd.readouterr().err
    finally:
        os.umask(old)
        for handler in logger.handlers[:]:
            if handler not in state[2]:
                logger.removeHandler(handler)
                handler.close()
        logger.setLevel(state[0])
        logger.propagate = state[1]
