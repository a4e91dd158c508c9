"""Makes the module's package reachable inside a Python host (docs/design.md, "Python hosts").

Not imported: the C shim runs this file's text (embedded by build_ffi.py) in the host's
interpreter before cffi starts, when the host is a Python program (python-pkcs11, PyKCS11) that
may live in another virtual environment, or be the system's python3, and so not see the module's
package or its dependencies. Only the standard library is used here.

The rule: the module's package and the distributions it needs (pkcs11-kms's requirements, and
theirs, as installed in the module's own environment) are imported from that environment, through
a finder placed first on sys.meta_path that answers for those top-level names only. A module the
host has already imported stays what it is; if its version does not meet a requirement, the
start fails with one line saying what to install where. Nothing else of the host's imports
changes, and sys.path is not edited.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from importlib.machinery import ModuleSpec
from importlib.metadata import Distribution

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")
_CLAUSE = re.compile(r"^\s*(~=|==|!=|<=|>=|<|>)\s*([0-9][0-9A-Za-z.*+!-]*)\s*$")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string, as a tuple (pre-releases count as their release)."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(p) for p in match.group(0).split(".")) if match else ()


def _satisfies(version: str, specifier: str) -> bool:
    """Whether `version` meets a PEP 440 specifier such as ">=1.2,<2" (release numbers only)."""
    have = _release(version)
    for clause in filter(None, (c.strip() for c in specifier.split(","))):
        match = _CLAUSE.match(clause)
        if match is None:
            continue
        op, text = match.groups()
        wildcard = text.endswith(".*")
        want = _release(text)
        size = max(len(have), len(want))
        a, b = have + (0,) * (size - len(have)), want + (0,) * (size - len(want))
        if wildcard:
            equal = have[: len(want)] == want
            if (op == "==" and not equal) or (op == "!=" and equal):
                return False
            continue
        if op == "~=":
            ok = a >= b and have[: len(want) - 1] == want[:-1]
        else:
            ok = {"==": a == b, "!=": a != b, "<=": a <= b, ">=": a >= b, "<": a < b,
                  ">": a > b}[op]
        if not ok:
            return False
    return True


def _requirements(dist: Distribution) -> Iterator[tuple[str, str]]:
    """(name, specifier) of each requirement that is not for an extra."""
    for line in dist.requires or ():
        text, _, marker = line.partition(";")
        if "extra" in marker:
            continue
        match = _NAME.match(text)
        if match:
            specifier = match.group(2).strip().strip("()")
            yield _normal(match.group(1)), specifier


def _top_level(dist: Distribution) -> set[str]:
    """The top-level import names a distribution installs."""
    text = dist.read_text("top_level.txt")
    if text:
        return {n.strip() for n in text.split() if n.strip()}
    names: set[str] = set()
    for path in dist.files or ():
        first = path.parts[0]
        if first.endswith((".dist-info", ".egg-info", ".pth")) or first in ("..", "__pycache__"):
            continue
        names.add(first.split(".")[0] if len(path.parts) == 1 else first)
    return names


# The CLI's PKCS#11 client: the library never imports it, and a Python host (python-pkcs11
# itself) keeps its own copy, whatever its version.
_CLI_ONLY = frozenset({"python-pkcs11"})


Closure = dict[str, tuple[Distribution, list[str]]]  # name -> (its distribution, specifiers)


def _closure(site_dirs: Iterable[str]) -> Closure:
    """pkcs11-kms and what it needs, as installed in its environment: name -> (dist, specifiers).
    Only those distributions' metadata is read (reading every one installed took ~0.1 s in an
    environment of 100: docs/performance.md)."""
    paths = list(site_dirs)
    needed: Closure = {}
    todo = [("pkcs11-kms", "")]
    while todo:
        name, specifier = todo.pop()
        if name in needed:
            needed[name][1].append(specifier)
            continue
        if name in _CLI_ONLY:
            continue
        # the first on the path, as the import system finds it
        found = next(iter(importlib.metadata.distributions(name=name, path=paths)), None)
        if found is None:  # not installed: a marker excluded it for this Python
            continue
        needed[name] = (found, [specifier])
        todo.extend(_requirements(found))
    return needed


def _host_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


class _OwnFinder:
    """Finds the module's own top-level packages in its environment, ahead of the host's path."""

    _pkcs11_kms = True

    def __init__(self, names: Iterable[str], search: Iterable[str]) -> None:
        self.names = frozenset(names)
        self.search = list(search)

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: object = None) -> ModuleSpec | None:
        if path is not None or fullname not in self.names:
            return None  # submodules come from their package's __path__
        return importlib.machinery.PathFinder.find_spec(fullname, self.search)

    def invalidate_caches(self) -> None:
        pass


def prepare(library: str, site_dirs: Sequence[str]) -> str | None:
    """Returns None when the module's package can be imported, else one line on what to do."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(library)))
    search = [package_root, *site_dirs]
    if any(getattr(f, "_pkcs11_kms", False) for f in sys.meta_path):
        return None
    loaded = sys.modules.get("pkcs11_kms")
    if loaded is not None:
        where = os.path.dirname(os.path.dirname(os.path.abspath(loaded.__file__ or "")))
        if where != package_root:
            return (f"this program already imported pkcs11_kms from {where}, not the one beside "
                    f"{library}: load that copy's libkms-pkcs11.so instead")
        return None
    spec = importlib.machinery.PathFinder.find_spec("pkcs11_kms", sys.path)
    if spec is not None and spec.origin and os.path.dirname(
            os.path.dirname(os.path.abspath(spec.origin))) == package_root:
        return None  # the host runs in the module's own environment
    needed = _closure(site_dirs)
    if "pkcs11-kms" not in needed:
        return (f"pkcs11-kms is not installed in {', '.join(site_dirs)}: reinstall it there "
                f"(pip install pkcs11-kms) and load the library it builds")
    names = {"pkcs11_kms"}
    for name, (dist, specifiers) in needed.items():
        tops = _top_level(dist) - {"pkcs11_kms"}
        if any(t in sys.modules for t in tops):
            version = _host_version(name) or dist.version
            for specifier in specifiers:
                if specifier and not _satisfies(version, specifier):
                    return (f"this program already imported {name} {version}; pkcs11-kms needs "
                            f"{name}{specifier}: install '{name}{specifier}' into {sys.prefix} "
                            f"(pip install '{name}{specifier}'), or load the module before {name}")
            continue
        names |= tops
    sys.meta_path.insert(0, _OwnFinder(names, search))
    return None


def run(library: str, site_dirs: Sequence[str]) -> str | None:
    """The C shim's entry: the problem as one line, or None; never raises."""
    try:
        return prepare(library, site_dirs)
    except Exception as exc:  # noqa: BLE001 - the C side turns this into one log line
        return f"cannot prepare this Python program for the module: {exc!r}"
