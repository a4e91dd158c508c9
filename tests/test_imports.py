"""What the module imports late (docs/performance.md) and what a forked child finds imported
(docs/design.md, "Key cache").

Every import inside a function of the module's runtime code is either in forking.DEFERRED (the
before-fork hook imports it, so that a child that can no longer read files has it) or named below
with the reason a child never needs to import it itself. A new late import fails this test until
it is put in one or the other.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

from pkcs11_kms import forking

PACKAGE = Path(forking.__file__).resolve().parent
# Not the module's runtime: the CLI, its tools and the emulator run in their own processes, and
# abi/python_host.py is run as text by the C shim.
NOT_RUNTIME = ("cli.py", "__main__.py", "tools/", "emulator/", "abi/python_host.py")

NOT_DEFERRED = {
    # imported when the module starts: abi/entry.py imports the package's modules and `time`
    # (through logging); the first C call's hostsafe.enter() imports _ssl and ctypes
    "pkcs11_kms", "pkcs11_kms.kms", "pkcs11_kms.logs", "ctypes", "time", "_ssl",
    # the KMS client's, when it is made in a privileged process (see below)
    "pkcs11_kms.kms.privileged",
    # the KMS client's: made before fork by kms/aws.py (prepare_for_children) when the cache
    # answered, else by the parent's first KMS call, else it is the child's own first call
    "asyncio", "asyncio.events", "copy", "aiobotocore.config", "aiobotocore.hooks",
    "aiobotocore.session", "aiobotocore.httpsession", "botocore", "botocore.context",
    "botocore.exceptions", "botocore.httpsession",
}


def _absolute(module: Path, node: ast.ImportFrom) -> list[str]:
    if not node.level:
        base = node.module or ""
    else:
        parts = list(module.relative_to(PACKAGE.parent).with_suffix("").parts)
        anchor = parts[: len(parts) - node.level]
        base = ".".join(anchor + ([node.module] if node.module else []))
    # `from .. import kms`, `from x.y import z`: each name may be a module of its own
    names = [f"{base}.{a.name}" for a in node.names]
    return [n for n in names if _is_module(n)] or [base]


def _is_module(name: str) -> bool:
    if name in sys.modules:  # find_spec() refuses one whose __spec__ is None
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # `name` is an attribute of its package, not a module
        return False


def late_imports() -> dict[str, list[str]]:
    """Module name -> where it is imported inside a function of the runtime code."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if any(rel == n or rel.startswith(n) for n in NOT_RUNTIME):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = _absolute(path, node)
                else:
                    continue
                for name in names:
                    found.setdefault(name, []).append(f"{rel}:{node.lineno}")
    return found


def test_every_late_import_is_deferred_or_explained():
    late = late_imports()
    assert "cryptography.hazmat.primitives.asymmetric.utils" in late  # the scan sees the mechanisms'
    unexplained = {}
    for name, where in late.items():
        if name not in forking.DEFERRED and name not in NOT_DEFERRED:
            unexplained[name] = where
    assert not unexplained, f"late imports a forked child may not manage: {unexplained}"


def test_deferred_modules_exist_and_are_imported_late():
    late = late_imports()
    assert set(forking.DEFERRED) <= set(late), set(forking.DEFERRED) - set(late)
    forking.import_deferred()
    assert all(name in sys.modules for name in forking.DEFERRED)
