"""Types (docs/development.md, "Types"): the abi entry points are typed from the one function
list, and the type checker passes over the whole package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import build_ffi  # noqa: E402 - the generator's own reading of cdefs/pkcs11_functions.h

ABI = ROOT / "pkcs11_kms" / "abi"


def _declarations() -> dict[str, list[tuple[str, str]]]:
    """C_* -> [(parameter, C type)] of every function with a Python callback."""
    out = {}
    for f in build_ffi.read_functions():
        if not f.c_only:
            params = [p.strip().rsplit(None, 1) for p in f.params.split(",")]
            out[f.name] = [(name, ctype) for ctype, name in params]
    return out


def _implementations() -> dict[str, ast.FunctionDef]:
    """C_* -> its Python function in abi/, following `C_SignInit = _init(...)` to the inner def."""
    found: dict[str, ast.FunctionDef] = {}
    for path in ABI.glob("*.py"):
        tree = ast.parse(path.read_text())
        factories = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("C_"):
                found[node.name] = node
            elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                  and isinstance(node.value.func, ast.Name)):
                name = node.targets[0].id  # type: ignore[attr-defined]
                factory = factories.get(node.value.func.id)
                if name.startswith("C_") and factory is not None:
                    inner = [n for n in factory.body if isinstance(n, ast.FunctionDef)]
                    assert len(inner) == 1, f"{factory.name} should define one function"
                    found[name] = inner[0]
    return found


def _signature(node: ast.FunctionDef) -> list[tuple[str, str]]:
    return [(a.arg, ast.unparse(a.annotation) if a.annotation else "") for a in node.args.args]


def test_every_entry_point_is_typed_as_declared():
    declared = _declarations()
    implemented = _implementations()
    assert {"C_Initialize", "C_Sign", "C_SignInit", "C_GetAttributeValue"} <= set(implemented)
    for name, node in implemented.items():
        assert name in declared, f"{name} is not in cdefs/pkcs11_functions.h"
        assert _signature(node) == declared[name], name
        returns = ast.unparse(node.returns) if node.returns else ""
        assert returns in ("None", "CK_RV", "CK_RV | None"), f"{name} returns {returns!r}"


def test_the_check_itself_notices_a_mismatch():
    node = ast.parse("def C_Logout(hSession: CK_ULONG) -> None: ...").body[0]
    assert _signature(node) != _declarations()["C_Logout"]  # type: ignore[arg-type]


def test_the_type_checker_passes():
    """mypy with the settings in pyproject.toml ([tool.mypy]); it is a test dependency."""
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
