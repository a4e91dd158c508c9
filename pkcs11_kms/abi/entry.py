"""Attaches a Python callback to every PKCS#11 function; no exception ever reaches C
(docs/design.md, "Exceptions never reach C")."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any, cast

from _kms_pkcs11 import ffi, lib

from .. import hostsafe, mechanisms  # noqa: F401 - mechanisms: installs the registry
from ..ck import CKR
from ..core import returns
from ..core.module import module
from ..core.session import session
from ..errors import PKCS11Error
from . import crypto, functions
from .cdata import CData

log = logging.getLogger("pkcs11_kms.abi")

# Looked up on every call, so a test in a Python host can swap one in to prove the guard.
IMPLEMENTATIONS: dict[str, Callable[..., int | None]] = {
    name: getattr(module, name) for module in (functions, crypto) for name in module.__all__
}


def _last_resort(exc_type: type[BaseException], exc_value: BaseException,
                 traceback: TracebackType | None) -> None:
    """cffi calls this when a callback itself could not return (it then returns the error value)."""
    log.error("internal error in a PKCS#11 callback: %s", exc_type.__name__)


def _not_supported(*_args: object) -> CKR:
    return CKR.FUNCTION_NOT_SUPPORTED  # after the callback's CKR_CRYPTOKI_NOT_INITIALIZED check


def _fit(name: str, rv: int) -> int:
    """Only codes the spec allows `name` reach the host (core/returns.py has the one rule)."""
    fitted = returns.fit(name, rv)
    if fitted != rv:
        log.debug("%s: %s returned as %s", name, _rv_name(rv), _rv_name(fitted))
    return fitted


def _rv_name(rv: int) -> str:
    try:
        return "CKR_" + CKR(rv).name
    except ValueError:
        return hex(rv)


def _device_error(e: BaseException) -> int:
    """The KMS error number behind a failure (core/kms_errors.py puts it on the PKCS11Error; a
    core path may have raised another PKCS11Error from that one), 0 when none."""
    for cause in (e, e.__cause__, e.__context__):
        number = getattr(cause, "device_error", 0)
        if number:
            return int(number)
    return 0


def _guarded(name: str) -> Callable[..., int]:
    """Order in every function (docs/design.md, "Return codes"): initialised, then the session
    handle (before any host pointer is read), then the arguments."""
    takes_session = name not in returns.SESSIONLESS
    keeps_device_error = name == "C_GetSessionInfo"
    finalize = name == "C_Finalize"

    def callback(*args: int | CData, _finalizing: Callable[[], bool] = sys.is_finalizing) -> int:
        if finalize and _finalizing():
            # The host's interpreter is tearing its modules down, ours too (python-pkcs11 calls
            # C_Finalize from a finaliser): the module's state goes with the interpreter.
            return 0
        previous = None
        s = None
        try:
            previous = hostsafe.enter()  # this thread's OpenSSL default: ours, until we return
            if name != "C_Initialize":
                module()  # CKR_CRYPTOKI_NOT_INITIALIZED before any pointer is read
            implementation = IMPLEMENTATIONS.get(name, _not_supported)
            if takes_session and implementation is not _not_supported:
                s = session(cast(int, args[0]))  # a CK_SESSION_HANDLE: first in every such function
                if not keeps_device_error:
                    s.device_error = 0  # ulDeviceError tells of the last call in the session
            rv = implementation(*args)
            return CKR.OK if rv is None else _fit(name, int(rv))
        except PKCS11Error as e:
            if e.why:
                log.debug("%s: %s", name, e)
            if s is not None:
                s.device_error = _device_error(e)
            return _fit(name, int(e.rv))
        except MemoryError:
            log.error("%s: out of memory", name)
            return int(CKR.HOST_MEMORY)
        except BaseException:
            log.exception("%s failed", name)
            return int(CKR.GENERAL_ERROR)
        finally:
            hostsafe.leave(previous)

    callback.__name__ = name
    return callback


def attach_all() -> list[str]:
    """Registers every `py_C_*` callback the library declares; returns the names."""
    names = sorted(n[3:] for n in dir(lib) if n.startswith("py_C_"))
    extern: Any = ffi.def_extern  # returns the decorator (types-cffi says None)
    for name in names:
        extern(name="py_" + name, error=int(CKR.GENERAL_ERROR), onerror=_last_resort)(
            _guarded(name)
        )
    return names


ATTACHED = attach_all()
hostsafe.add_thread_hook(lib.kms_mark_module_thread)  # calls from our threads are refused in C
hostsafe.add_exit_flag(lib.kms_exiting)  # set by the C exit handler: no KMS work then
