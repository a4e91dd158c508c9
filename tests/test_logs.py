"""logs.py: level sources, stderr or file, and leaving the host's logging alone."""

from __future__ import annotations

import io
import logging
import os
import re
import sys

import pytest

from pkcs11_kms import logs

LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} pkcs11-kms\[(\d+)\]: (DEBUG|INFO|WARNING|ERROR) (.*)$"
)


@pytest.fixture(autouse=True)
def restore():
    logger = logging.getLogger("pkcs11_kms")
    state = logger.level, logger.propagate, list(logger.handlers)
    yield
    for handler in logger.handlers[:]:
        if handler not in state[2]:  # configure()'s, closing its log file
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(state[0])
    logger.propagate = state[1]


def lines(text: str) -> list[tuple[str, str]]:
    """(level, message) of each line, after checking the format and the pid."""
    out = []
    for line in text.splitlines():
        match = LINE.match(line)
        assert match, line
        assert int(match[1]) == os.getpid()
        out.append((match[2], match[3]))
    return out


def emit_all() -> None:
    log = logging.getLogger("pkcs11_kms.kms")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")


@pytest.mark.parametrize(
    "level, environ, shown",
    [
        (None, {}, ["w", "e"]),  # default: warning
        ("info", {}, ["i", "w", "e"]),
        ("error", {}, ["e"]),
        ("error", {"PKCS11_KMS_LOG": "debug"}, ["d", "i", "w", "e"]),  # env overrides config
        ("error", {"PKCS11_KMS_LOG": "INFO"}, ["i", "w", "e"]),
        ("error", {"OPENSSL_ENGINE_KMS_LOG": "debug"}, ["d", "i", "w", "e"]),  # the engine's name
        ("error", {"OPENSSL_ENGINE_KMS_LOG": "trace"}, ["d", "i", "w", "e"]),
        ("debug", {"PKCS11_KMS_LOG": "warn"}, ["w", "e"]),
        ("debug", {"PKCS11_KMS_LOG": "error", "OPENSSL_ENGINE_KMS_LOG": "debug"}, ["e"]),
        ("debug", {"PKCS11_KMS_LOG": ""}, ["d", "i", "w", "e"]),  # empty: unset
    ],
)
def test_level(capfd, level, environ, shown):
    logs.configure(level, None, environ)
    emit_all()
    out, err = capfd.readouterr()
    assert out == ""
    assert [message for _, message in lines(err)] == shown


def test_bad_env_level_warns_and_uses_config(capfd):
    logs.configure("error", None, {"PKCS11_KMS_LOG": "verbose"})
    emit_all()
    assert lines(capfd.readouterr().err) == [
        (
            "WARNING",
            "ignoring PKCS11_KMS_LOG='verbose': expected one of debug, info, warning, error",
        ),
        ("ERROR", "e"),
    ]


def test_log_file_appends_and_leaves_stderr_alone(capfd, tmp_path):
    path = tmp_path / "kms.log"
    path.write_text("")
    logs.configure("info", str(path), {})
    logging.getLogger("pkcs11_kms").info("first")
    logs.configure("info", str(path), {})
    logging.getLogger("pkcs11_kms.core").warning("second")
    assert capfd.readouterr() == ("", "")
    assert lines(path.read_text()) == [("INFO", "first"), ("WARNING", "second")]


def test_unopenable_log_file_falls_back_to_stderr(capfd, tmp_path):
    logs.configure("error", str(tmp_path / "no" / "such" / "dir.log"), {})
    logging.getLogger("pkcs11_kms").error("still here")
    found = lines(capfd.readouterr().err)
    assert len(found) == 2
    assert found[0][0] == "WARNING" and "cannot open log file" in found[0][1]
    assert "No such file or directory, using stderr" in found[0][1]
    assert found[1] == ("ERROR", "still here")


def test_idempotent(capfd):
    logger = logging.getLogger("pkcs11_kms")
    before = list(logger.handlers)
    logs.configure("info", None, {})
    logs.configure("info", None, {})
    logs.configure("debug", None, {})
    assert len(logger.handlers) == len(before) + 1
    logger.info("once")
    assert lines(capfd.readouterr().err) == [("INFO", "once")]


def test_host_logging_untouched(capfd):
    root = logging.getLogger()
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    host_handler = Collect()
    root.addHandler(host_handler)
    try:
        root_state = (root.level, list(root.handlers))
        logs.configure("debug", None, {})
        assert (root.level, list(root.handlers)) == root_state
        logging.getLogger("pkcs11_kms.kms").warning("ours")
        logging.getLogger("host").warning("theirs")
        assert [r.getMessage() for r in seen] == ["theirs"]
        assert not logging.getLogger("pkcs11_kms").propagate
        out, err = capfd.readouterr()
        assert out == ""
        assert lines(err) == [("WARNING", "ours")]
    finally:
        root.removeHandler(host_handler)


def test_follows_sys_stderr_swaps(capfd, monkeypatch):
    # the handler looks sys.stderr up per record: pytest (and hosts) replace it after configure
    logs.configure("warning", None, {})
    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)
    logging.getLogger("pkcs11_kms").warning("after swap")
    assert lines(swapped.getvalue()) == [("WARNING", "after swap")]
    assert capfd.readouterr() == ("", "")


def test_policy_is_written_down():
    assert "never log plaintext" in (logs.__doc__ or "").lower()
