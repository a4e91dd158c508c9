"""fork() while another thread is importing (docs/design.md, "Fork during import").

A thread that is importing a module when the process forks does not exist in the child. Its module
stays half executed in sys.modules (`__spec__._initializing` still true) and its module lock stays
held by a thread id the child's own new threads may reuse: the child gets the half module for good
("cannot import name ... from partially initialized module") or waits forever for the lock.

- Before fork, wait (GIL released, at most _WAIT seconds) until no other thread holds a module
  lock, so that a fork normally finds no import in flight.
- In the child, take back what the dead threads were importing: their module locks and
  deadlock-detection entries go, and their half modules leave sys.modules. The next import of such
  a module runs its code again in the same module object, as importlib.reload does: whoever holds
  the half module then sees the whole one, and its submodules that did finish stay its attributes
  (dropping the half `aiohttp` alone left a new `aiohttp` without `aiohttp.http_exceptions`).
  A C extension is made anew; one that can only give back its half module (Cython keeps it in a C
  static) fails with ImportError, and the packages using one fall back to their Python code.
  Modules the forking thread itself is importing stay: its frames end them.

Uses importlib._bootstrap's `_module_locks` and `_blocking_on` (CPython 3.11 to 3.13); if their
shape is not what is expected, the hooks do nothing.
"""

from __future__ import annotations

import _imp
import _thread
import concurrent.futures.thread  # noqa: F401 - its before-fork hook must be registered before ours
import importlib
import logging
import os
import sys
import time
from importlib import _bootstrap
from importlib.machinery import ModuleSpec, SourceFileLoader, SourcelessFileLoader
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # importlib.abc imports importlib.resources: ~6 ms at every start
    from importlib.abc import Loader

log = logging.getLogger("pkcs11_kms")

_WAIT = 5.0  # seconds a fork may wait for another thread's import
_POLL = 0.005


def _lock_owners() -> dict[str, int]:
    """Module name -> id of the thread holding its module lock, for every held lock."""
    owners: dict[str, int] = {}
    table = getattr(_bootstrap, "_module_locks", None)
    if not isinstance(table, dict):
        return owners
    for name, ref in list(table.items()):
        lock = ref() if callable(ref) else None
        owner = getattr(lock, "owner", None)
        if owner is not None:
            owners[name] = owner
    return owners


def _imports_elsewhere(me: int) -> bool:
    """Whether another thread is importing, and this one is not: a thread that forks from inside an
    import may hold a lock the others wait for, and waiting for them would only lose time."""
    owners = set(_lock_owners().values())
    return bool(owners) and me not in owners


def wait_for_imports(timeout: float = _WAIT) -> bool:
    """Waits until no other thread is importing; False if one still is after `timeout` seconds."""
    me = _thread.get_ident()
    deadline = time.monotonic() + timeout
    while _imports_elsewhere(me):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)  # releases the GIL: the importing thread runs
    return True


def _spec(module: object) -> Any:
    namespace = getattr(module, "__dict__", None)  # not getattr(module, ...): no lazy __getattr__
    return namespace.get("__spec__") if isinstance(namespace, dict) else None


def _half(module: object, locked: bool) -> bool:
    """Whether a module another thread was importing at fork is unfinished: its code was running
    (`_initializing`), or its lock is held and it has no spec yet (a single-phase C extension, which
    Cython puts in sys.modules while its init function runs)."""
    spec = _spec(module)
    if getattr(spec, "_initializing", False) is True:
        return True
    return locked and spec is None


class _InPlace:
    """A loader running a module's code again in its existing module object."""

    def __init__(self, module: ModuleType, spec: ModuleSpec) -> None:
        self.module, self.spec = module, spec

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package ...
        return getattr(self.spec.loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        loader = self.spec.loader
        if loader is None:
            raise ImportError(f"{module.__name__}: no loader to run it again")
        loader.exec_module(module)
        self.spec._initializing = False  # type: ignore[attr-defined]
        module.__spec__ = self.spec  # its own loader again


class _Fresh:
    """The loader of a C extension that was half initialised at fork. One that can only give back
    that same half module (Cython keeps its module in a C static and returns it) raises ImportError
    instead, now and at every later import: aiohttp, yarl, multidict and frozenlist then use their
    pure-Python code. Others (CPython's own) make a new module."""

    def __init__(self, loader: Any, half: ModuleType, refused: set[str]) -> None:
        self.loader, self.half, self.refused = loader, half, refused

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self.loader.create_module(spec)
        if module is self.half:
            if sys.modules.get(spec.name) is module:  # a single-phase init put it back
                del sys.modules[spec.name]
            self.refused.add(spec.name)
            raise _refusal(spec.name)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader


def _refusal(name: str) -> ImportError:
    return ImportError(f"{name} was half initialised when the process forked", name=name)


class _Resume:
    """A meta path finder giving back, once each, the half modules forget_dead_imports took out."""

    def __init__(self) -> None:
        self.modules: dict[str, ModuleType] = {}  # Python code: run again in place
        self.extensions: dict[str, ModuleType] = {}  # C extensions: made anew, or ImportError
        self.refused: set[str] = set()

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        module = self.modules.pop(name, None)
        old = module.__spec__ if module is not None else None
        if module is not None and old is not None:
            loader: Any = _InPlace(module, old)
            spec = ModuleSpec(name, loader, origin=old.origin)
            spec.submodule_search_locations = old.submodule_search_locations
            spec.cached, spec.has_location = old.cached, old.has_location
            return spec
        if name in self.refused:
            raise _refusal(name)
        half = self.extensions.pop(name, None)
        if half is None:
            return None
        found = self._next_spec(name, path, target)
        if found is not None and found.loader is not None:
            found.loader = cast("Loader", _Fresh(found.loader, half, self.refused))
        return found

    def _next_spec(self, name: str, path: object, target: object) -> ModuleSpec | None:
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: ModuleSpec | None = find(name, path, target)
            if spec is not None:
                return spec
        return None


_resume = _Resume()


def forget_dead_imports() -> list[str]:
    """In a forked child: takes back the imports other (now gone) threads had in flight. Returns
    the names of the half-executed modules taken out of sys.modules."""
    me = _thread.get_ident()
    owners = _lock_owners()
    locks = getattr(_bootstrap, "_module_locks", None)
    if not isinstance(locks, dict):
        return []
    _imp.acquire_lock()
    try:
        dropped = [name for name, module in list(sys.modules.items())
                   if owners.get(name) != me and _half(module, name in owners)]
        for name in dropped:
            module = sys.modules.pop(name)
            loader = getattr(_spec(module), "loader", None)
            if isinstance(loader, (SourceFileLoader, SourcelessFileLoader)):
                _resume.modules[name] = module
            else:  # a C extension, or a module whose spec was not set yet: made anew
                _resume.extensions[name] = module
        if (_resume.modules or _resume.extensions) and _resume not in sys.meta_path:
            sys.meta_path.insert(0, _resume)
        # Every lock not held by this thread: a free lock may still have its inner lock taken by a
        # thread that was inside acquire() or release(). The next import makes a new one.
        for name in [n for n in list(locks) if owners.get(n) != me]:
            del locks[name]
        blocking = getattr(_bootstrap, "_blocking_on", None)
        blocking = getattr(blocking, "data", blocking)  # 3.12+: a weak-value dict over .data
        if isinstance(blocking, dict):
            for tid in [t for t in list(blocking) if t != me]:
                del blocking[tid]
    finally:
        _imp.release_lock()
    return dropped


# What the module's operations import inside functions, when first needed: a host that only lists
# slots loads none of it (docs/performance.md). A child forked before its parent needed them may
# not be able to read them any more (nginx's workers drop privileges), so the before-fork hook
# imports them (docs/design.md, "Key cache"); the KMS client's own imports are kms/aws.py's
# (prepare_for_children). tests/test_imports.py keeps this list complete.
DEFERRED = (
    "asn1crypto.algos",
    "asn1crypto.core",
    "asn1crypto.pem",
    "asn1crypto.x509",
    "cryptography.exceptions",
    "cryptography.hazmat.primitives.asymmetric.ec",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "cryptography.hazmat.primitives.asymmetric.padding",
    "cryptography.hazmat.primitives.asymmetric.rsa",
    "cryptography.hazmat.primitives.asymmetric.utils",
    "cryptography.hazmat.primitives.hashes",
    "cryptography.hazmat.primitives.serialization",
    "pkcs11_kms.core.spki",
    "signal",
    "tempfile",
)


def import_deferred() -> None:
    """Imports DEFERRED (each once: later forks find them in sys.modules)."""
    for name in DEFERRED:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # the operation needing it reports it
            log.debug("before fork: %s not imported: %r", name, exc)


def _before_fork() -> None:
    try:
        import_deferred()
        wait_for_imports(_WAIT)
    except Exception:  # a hook must never fail the host's fork
        pass


def _after_fork_in_child() -> None:
    try:
        dropped = forget_dead_imports()
    except Exception as exc:
        log.debug("forked child: could not reset imports: %r", exc)
        return
    if dropped:
        log.debug("forked child: %d half-imported modules dropped (%s)", len(dropped),
                  ", ".join(sorted(dropped)[:8]))


# Before-fork hooks run in reverse order of registration: logging's and concurrent.futures's,
# imported above, run after ours, so their locks are free while we wait. After-fork hooks run in
# order: ours runs before those of modules imported later (kms/loop.py imports ctypes in its hook).
os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
