"""Mechanism parameters as Python values: what the abi layer reads out of CK_MECHANISM.pParameter."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PssParams:
    """CK_RSA_PKCS_PSS_PARAMS."""

    hash_alg: int
    mgf: int
    salt_length: int


@dataclass(frozen=True)
class OaepParams:
    """CK_RSA_PKCS_OAEP_PARAMS; `label` is the CKZ_DATA_SPECIFIED source data."""

    hash_alg: int
    mgf: int
    source: int
    label: bytes


@dataclass(frozen=True)
class MechanismArgs:
    """A CK_MECHANISM: its type and its parameters (None, raw bytes, or one of the above)."""

    mechanism: int
    params: PssParams | OaepParams | bytes | None = None
