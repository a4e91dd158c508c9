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
class EddsaParams:
    """CK_EDDSA_PARAMS: prehashed (Ed25519ph) or not, and the context."""

    prehash: bool
    context: bytes


@dataclass(frozen=True)
class SignContext:
    """CK_SIGN_ADDITIONAL_CONTEXT (3.2, ML-DSA): the hedging asked for, and the context."""

    hedge: int  # CKH_HEDGE_PREFERRED 0, CKH_HEDGE_REQUIRED 1, CKH_DETERMINISTIC_REQUIRED 2
    context: bytes


@dataclass(frozen=True)
class Ecdh1Params:
    """CK_ECDH1_DERIVE_PARAMS: the KDF, its shared data, and the other party's public value."""

    kdf: int
    shared_data: bytes
    public_data: bytes


@dataclass(frozen=True)
class MacLength:
    """CK_MAC_GENERAL_PARAMS: the length of MAC a *_HMAC_GENERAL mechanism gives."""

    length: int


Params = PssParams | OaepParams | EddsaParams | SignContext | Ecdh1Params | MacLength


@dataclass(frozen=True)
class MechanismArgs:
    """A CK_MECHANISM: its type and its parameters (None, raw bytes, or one of the above)."""

    mechanism: int
    params: Params | bytes | None = None
