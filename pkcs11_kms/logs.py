"""Logging: the "pkcs11_kms" logger's own handler (stderr or a file), never the host's logging.

The module runs inside other programs, Python ones included (docs/design.md, "Python hosts"): it
configures only the "pkcs11_kms" logger (its children are the modules'
`logging.getLogger(__name__)`), with its own handler and propagate=False, never the root logger,
and never writes to stdout.

Redaction policy: never log plaintext, the data to be signed (or its digest), decrypted data,
PINs, or credentials (access keys, session tokens, signed request headers). Log key ids, ARNs,
mechanism names, lengths, KMS error codes and request ids. botocore, aiobotocore and aiohttp log
request bodies and signed headers at debug level: their records made by the module's KMS work
never reach any handler (`guard_libraries`), whatever the host's logging says.

Every line is one line: control characters in a message (text from KMS, key descriptions,
aliases, config values, file names) are escaped by the module's formatter, so outside text can
never start a line of its own (docs/security.md, "Logs").
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from . import trust

LOGGER_NAME = "pkcs11_kms"
ENV_VARS = ("PKCS11_KMS_LOG", "OPENSSL_ENGINE_KMS_LOG")  # the second: the original engine's name
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_ALIASES = {"trace": "debug", "warn": "warning"}  # env_logger spellings the engine's users know
FORMAT = "%(asctime)s.%(msecs)03d pkcs11-kms[%(process)d]: %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"

logger = logging.getLogger(LOGGER_NAME)
_lock = threading.Lock()
_handler: logging.Handler | None = None
_at_start: list[str] = []  # warnings for the next configure(): config.load_config's


class _OneLineFormatter(logging.Formatter):
    """FORMAT, with the message's control characters escaped; a traceback's lines each start
    with four spaces, so that no text in it can pass for a line of ours."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = trust.escape(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for block in (record.exc_text, record.stack_info):
            if block:
                text += "".join("\n    " + trust.escape(line) for line in block.splitlines())
        return text


class _LogFile(logging.StreamHandler):
    """Appends to a log file opened with O_NOFOLLOW, created with mode 0600; closes it."""

    def close(self) -> None:
        self.acquire()
        try:
            self.stream.close()
        finally:
            self.release()
            super().close()


def _open_log_file(path: str) -> logging.Handler:
    """The log file's handler; OSError when it cannot be opened or is not a file we trust (a
    symbolic link, another user's file, writable by others: docs/security.md, "Files")."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        try:
            trust.check_stat(st, path)
        except trust.Untrusted as e:
            raise OSError(str(e)) from None
        stream = os.fdopen(fd, "a", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise
    return _LogFile(stream)


def warn_at_start(message: str) -> None:
    """A warning the next configure() writes, to the destination it sets up."""
    _at_start.append(message)  # C_Initialize's, under the module's state lock


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (pytest swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def _level_name(value: str | None) -> str | None:
    name = (value or "").strip().lower()
    name = _ALIASES.get(name, name)
    return name if name in LEVELS else None


def configure(
    level: str | None = None, log_file: str | None = None, environ: Mapping[str, str] | None = None
) -> None:
    """Set the module's log level and destination; calling it again replaces the previous setup.

    The level comes from $PKCS11_KMS_LOG (or $OPENSSL_ENGINE_KMS_LOG), else `level` (the config's
    log_level), else "warning". Records go to `log_file` (appended) or to stderr; a log file that
    cannot be opened means stderr and one warning. A privileged process ignores the variables
    (docs/security.md, "Privileged hosts").
    """
    global _handler
    environ = trust.environ(environ)
    problems = []
    chosen = None
    for var in ENV_VARS:
        if environ.get(var):
            chosen = _level_name(environ[var])
            if chosen:
                break
            problems.append(f"ignoring {var}={environ[var]!r}: expected one of {', '.join(LEVELS)}")
    chosen = chosen or _level_name(level) or "warning"

    handler: logging.Handler
    if log_file:
        try:
            handler = _open_log_file(log_file)
        except OSError as e:
            handler = _StderrHandler()
            problems.append(f"cannot open log file {log_file}: {e.strerror or e}, using stderr")
    else:
        handler = _StderrHandler()
    handler.setFormatter(_OneLineFormatter(FORMAT, DATE_FORMAT))

    with _lock:
        problems += _at_start
        _at_start.clear()
        if _handler is not None:
            logger.removeHandler(_handler)
            _handler.close()
        _handler = handler
        logger.addHandler(handler)
        logger.setLevel(LEVELS[chosen])
        logger.propagate = False
    for problem in problems:  # shown whatever the level: the user asked for something else
        record = logger.makeRecord(LOGGER_NAME, logging.WARNING, __file__, 0, problem, (), None)
        handler.handle(record)


# --- botocore, aiobotocore and aiohttp inside a Python host ----------------------------------

LIBRARIES = ("botocore", "aiobotocore", "aiohttp", "urllib3")
_guarded: list[int] = [-1]  # how many loggers there were at the last guard_libraries()
_module_loops: weakref.WeakSet[Any] = weakref.WeakSet()  # kms/aws.py adds each loop it uses


class _NotOurs(logging.Filter):
    """Drops a library's records made by the module's KMS work: on one of its event loops, or on
    one of its threads. botocore at debug level logs request and response bodies (messages,
    digests, plaintext, ciphertext) and signed headers (the session token); the host's own use
    of these libraries keeps its records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _in_module_work()


_NOT_OURS = _NotOurs()


def _in_module_work() -> bool:
    import asyncio

    running = asyncio._get_running_loop()
    if running is not None and running in _module_loops:
        return True
    return threading.current_thread().name.startswith("pkcs11-kms")


def mark_module_loop(loop: Any) -> None:
    """An event loop of the module's KMS work (kms/loop.py), on our thread or a host's."""
    _module_loops.add(loop)


def guard_libraries() -> None:
    """Put the filter on every logger of LIBRARIES (a filter applies only to the records of the
    logger it is on, not to its children's). Cheap when no logger was added since the last call:
    kms/aws.py calls it before and after each request, since the libraries import modules (and
    make loggers) as they go."""
    loggers = logging.Logger.manager.loggerDict
    if len(loggers) == _guarded[0]:
        return
    # No lock of ours: a child forked while another thread held it would wait for it forever
    # (docs/design.md, "Fork"). Two threads at once at worst add the filter twice, harmlessly.
    count = len(loggers)
    for name, each in list(loggers.items()):
        if (name.split(".", 1)[0] in LIBRARIES and isinstance(each, logging.Logger)
                and _NOT_OURS not in each.filters):
            each.addFilter(_NOT_OURS)
    _guarded[0] = count
