"""`pkcs11-kms keys`: the tokens and keys a config selects, with ready-to-paste PKCS#11 URIs."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from ..config import Config
from ..ck import CKO
from ..core.keyspecs import KEY_USAGES
from ..core.objects import KmsKey
from .selection import TokenListing, list_tokens
from .uri import make_uri

_OPERATIONS = {"SIGN_VERIFY": "sign", "ENCRYPT_DECRYPT": "decrypt", "GENERATE_VERIFY_MAC": "mac",
               "KEY_AGREEMENT": "derive"}
# RFC 7512's type= of each object class a key appears as
_URI_TYPES = {CKO.PRIVATE_KEY: "private", CKO.PUBLIC_KEY: "public", CKO.SECRET_KEY: "secret-key"}


def key_uris(token_label: str, key: KmsKey, label_unique: bool = True) -> dict[str, str]:
    """The URIs of a key's objects: by label (when no other key of the token has it) and by id."""
    types = [_URI_TYPES[cls] for cls in KEY_USAGES[key.usage].objects]
    uris: dict[str, str] = {}
    if label_unique:
        uris |= {t: make_uri(token_label, key.label, object_type=t) for t in types}
    uris |= {f"{t}_by_id": make_uri(token_label, ckid=key.ckid, object_type=t) for t in types}
    return uris


def _unique_labels(listing: TokenListing) -> set[str]:
    labels = [k.label for k in listing.keys]
    return {label for label in labels if labels.count(label) == 1}


def as_json(config: Config, listings: list[TokenListing]) -> dict[str, Any]:
    tokens = []
    for t in listings:
        unique = _unique_labels(t)
        keys = []
        for k in t.keys:
            subject = t.certificates.get(k.key_id)
            keys.append({
                "label": k.label,
                "key_id": k.key_id,
                "arn": k.arn,
                "key_spec": k.spec.name,
                "key_usage": k.usage,
                "operation": _OPERATIONS.get(k.usage, ""),
                "key_type": k.spec.key_type.name,
                "bits": k.spec.bits,
                "cka_id": k.ckid.hex(),
                "certificate": subject,
                "uris": {
                    **key_uris(t.label, k, k.label in unique),
                    **({"certificate": make_uri(t.label, ckid=k.ckid, object_type="cert")}
                       if subject else {}),
                },
            })
        c = t.config.connection
        tokens.append({
            "slot": t.slot,
            "label": t.label,
            "serial": t.serial,
            "uri": make_uri(t.label),
            "region": c.region,
            "endpoint_url": c.endpoint_url,
            "keys": keys,
            "error": t.error,
        })
    return {"config": config.path, "tokens": tokens}


def print_human(config: Config, listings: list[TokenListing], out: TextIO) -> None:
    print(f"config: {config.path or 'none (one token with every usable key, AWS defaults)'}",
          file=out)
    for t in listings:
        c = t.config.connection
        where = ", ".join(filter(None, [c.endpoint_url, c.region]))
        print(f"\ntoken {t.label!r} (slot {t.slot}{', ' + where if where else ''})", file=out)
        print(f"  {make_uri(t.label)}", file=out)
        if t.error:
            print(f"  ✗ cannot load its keys: {t.error}", file=out)
            continue
        if not t.keys:
            print("  (no usable key: `pkcs11-kms doctor` says why)", file=out)
        unique = _unique_labels(t)
        for k in t.keys:
            print(f"  {k.label}: {k.spec.name} {k.usage} ({_OPERATIONS.get(k.usage, '')}), "
                  f"CKA_ID {k.ckid.hex()}", file=out)
            print(f"    {'key:':<9}{k.arn or k.key_id}", file=out)
            uris = key_uris(t.label, k, k.label in unique)
            for name, title in (("private", "private"), ("public", "public"),
                                ("secret-key", "secret"), ("private_by_id", "by id"),
                                ("secret-key_by_id", "by id")):
                if name in uris:
                    print(f"    {title + ':':<9}{uris[name]}", file=out)
            subject = t.certificates.get(k.key_id)
            if subject:
                print(f"    {'cert:':<9}{make_uri(t.label, ckid=k.ckid, object_type='cert')}",
                      file=out)
                print(f"    {'':<9}{subject}", file=out)


def run(config: Config, want_json: bool, out: TextIO = sys.stdout) -> int:
    listings = list_tokens(config)
    if want_json:
        json.dump(as_json(config, listings), out, indent=2)
        out.write("\n")
    else:
        print_human(config, listings, out)
    failed = [t for t in listings if t.error]
    for t in failed:
        print(f"pkcs11-kms keys: token {t.label!r}: {t.error}", file=sys.stderr)
    return 1 if failed else 0
