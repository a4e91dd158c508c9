"""Which tokens and keys a config selects, found exactly as the module finds them (core.module)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from .. import mechanisms  # noqa: F401 - installs the registry: objects as the module makes them
from ..ck import CKA
from ..config import Config, TokenConfig
from ..core.objects import KmsKey
from ..errors import PKCS11Error


@dataclass
class TokenListing:
    """One token as the module would show it: its keys, or why they could not be loaded."""

    slot: int
    label: str
    serial: str
    config: TokenConfig
    keys: list[KmsKey] = field(default_factory=list)
    certificates: dict[str, str] = field(default_factory=dict)  # key id -> certificate subject
    error: str | None = None


def quiet_module_logs(level: str | None = None) -> None:
    """The module's loggers write to stderr only at `level` (None: nothing): the subcommands
    report problems themselves. $PKCS11_KMS_LOG still wins, as in the module."""
    from .. import logs

    if level is not None or os.environ.get("PKCS11_KMS_LOG"):
        logs.configure(level or "error")
        return
    logger = logging.getLogger(logs.LOGGER_NAME)
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = False
    logger.setLevel(logging.CRITICAL + 1)


def describe(error: BaseException) -> str:
    return error.why if isinstance(error, PKCS11Error) and error.why else str(error)


def list_tokens(config: Config) -> list[TokenListing]:
    """Every token of `config` with its keys (KMS is called: GetPublicKey, or List* calls)."""
    from ..core.module import build_tokens

    try:
        tokens = build_tokens(config)
    except PKCS11Error as e:  # token_per_key with listed keys: listing failed
        first = config.tokens[0]
        return [TokenListing(0, first.label or "?", "", first, error=describe(e))]
    out = []
    for token in tokens:
        listing = TokenListing(token.slot_id, token.label, token.serial, token.config)
        try:
            objects = token.objects()
        except PKCS11Error as e:
            listing.error = describe(e)
            out.append(listing)
            continue
        ckid_to_key: dict[bytes, KmsKey] = {}
        for o in objects:
            if o.key is not None and o.key.key_id not in (k.key_id for k in listing.keys):
                listing.keys.append(o.key)
                ckid_to_key[o.key.ckid] = o.key
        for o in objects:
            key = ckid_to_key.get(o.attributes.get(int(CKA.ID), b""))
            if o.certificate is not None and key is not None:
                listing.certificates.setdefault(key.key_id, o.certificate.subject.human_friendly)
        out.append(listing)
    return out
