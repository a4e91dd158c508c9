"""The mechanism registry: which CKM_* a token offers for which keys (PKCS#11 §5.4 C_GetMechanism*).

The registry is the one ordered list of pkcs11_kms/mechanisms/__init__.py, installed here; the core
asks it and never switches on a mechanism itself. A mechanism not in it is CKR_MECHANISM_INVALID.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, TypeAlias

from ..ck import CKF, CKK, CKM, CKR
from ..errors import PKCS11Error
from .keyspecs import KeySpec
from .params import MechanismArgs

if TYPE_CHECKING:
    from .operations import KeyUse, Operation


class Kind(StrEnum):
    """The operations a session runs, one of each kind at a time (§5.9-5.12)."""

    SIGN = "sign"
    VERIFY = "verify"
    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    DIGEST = "digest"
    DERIVE = "derive"


# Makes an operation (core/operations.py) for a kind, its key (None for a digest) and parameters.
Start: TypeAlias = "Callable[[Kind, KeyUse | None, MechanismArgs], Operation]"
# Derives a key's value with a base key (C_DeriveKey): its length in bytes, or None for the
# mechanism's natural length.
Derive: TypeAlias = "Callable[[KeyUse, MechanismArgs, int | None], bytes]"


@dataclass(frozen=True)
class Mechanism:
    """A mechanism's static facts. `flags` are CKF_SIGN/VERIFY/ENCRYPT/DECRYPT/... (CKF_HW added)."""

    mechanism: CKM
    key_type: CKK | None  # None: a mechanism without a key (digests)
    flags: int
    key_usage: str | None  # the KMS KeyUsage a key needs for it
    start: Start | None  # None: the mechanism runs no sign/verify/encrypt/decrypt/digest
    key_specs: frozenset[str] | None = None  # None: every spec of key_type
    derive: Derive | None = None  # C_DeriveKey's
    parameter: str | None = None  # the C structure of its CK_MECHANISM parameter (abi/ reads it)
    parameter_optional: bool = False  # NULL means the mechanism's default


_REGISTRY: tuple[Mechanism, ...] = ()  # in the order of C_GetMechanismList
_BY_NUMBER: dict[int, Mechanism] = {}


def install(mechanisms: Sequence[Mechanism]) -> None:
    """Makes `mechanisms`, in their order, the registry (mechanisms/__init__.py's list)."""
    global _REGISTRY, _BY_NUMBER
    _REGISTRY = tuple(mechanisms)
    _BY_NUMBER = {int(m.mechanism): m for m in _REGISTRY}


def known(mechanism: int) -> Mechanism | None:
    return _BY_NUMBER.get(mechanism)


def lookup(mechanism: int) -> Mechanism:
    try:
        return _BY_NUMBER[mechanism]
    except KeyError:
        raise PKCS11Error(CKR.MECHANISM_INVALID, f"mechanism {mechanism:#x} is not offered") from None


def applies(m: Mechanism, spec: KeySpec, usage: str) -> bool:
    return (
        m.key_type is not None
        and m.key_type == spec.key_type
        and m.key_usage == usage
        and (m.key_specs is None or spec.name in m.key_specs)
    )


def allowed_for(spec: KeySpec, usage: str) -> list[CKM]:
    """CKA_ALLOWED_MECHANISMS of a key."""
    return [m.mechanism for m in _REGISTRY if applies(m, spec, usage)]


def offered(keys: Iterable[tuple[KeySpec, str]]) -> dict[int, tuple[int, int, int]]:
    """For a token's keys: mechanism -> (min key size, max key size, flags), as C_GetMechanismInfo.

    In the registry's order (mechanisms/__init__.py says why)."""
    keys = list(keys)
    out: dict[int, tuple[int, int, int]] = {}
    for m in _REGISTRY:
        for spec, usage in keys:
            if not applies(m, spec, usage):
                continue
            size = spec.mechanism_size
            lo, hi, flags = out.get(int(m.mechanism), (size, size, 0))
            out[int(m.mechanism)] = (min(lo, size), max(hi, size), flags | m.flags | CKF.HW)
        if m.key_type is None:  # computed here, in software: no CKF_HW
            out[int(m.mechanism)] = (0, 0, m.flags)
    return out
