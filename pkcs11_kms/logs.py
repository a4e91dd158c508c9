"""Logging: the "pkcs11_kms" logger's own handler (stderr or a file), never the host's logging.

The module runs inside other programs, Python ones included (docs/design.md, "Python hosts"): it
configures only the "pkcs11_kms" logger (its children are the modules'
`logging.getLogger(__name__)`), with its own handler and propagate=False, never the root logger,
and never writes to stdout.

Redaction policy: never log plaintext, the data to be signed (or its digest), decrypted data,
PINs, or credentials (access keys, session tokens, signed request headers). Log key ids, ARNs,
mechanism names, lengths, KMS error codes and request ids.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping

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
    level: str | None = None, log_file: str | None = None, environ: Mapping[str, str] = os.environ
) -> None:
    """Set the module's log level and destination; calling it again replaces the previous setup.

    The level comes from $PKCS11_KMS_LOG (or $OPENSSL_ENGINE_KMS_LOG), else `level` (the config's
    log_level), else "warning". Records go to `log_file` (appended) or to stderr; a log file that
    cannot be opened means stderr and one warning.
    """
    global _handler
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
            handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        except OSError as e:
            handler = _StderrHandler()
            problems.append(f"cannot open log file {log_file}: {e.strerror or e}, using stderr")
    else:
        handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))

    with _lock:
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
