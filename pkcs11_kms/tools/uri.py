"""PKCS#11 URIs (RFC 7512): writing them for `keys`, reading them for `tsa --key`."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

SCHEME = "pkcs11:"
# RFC 7512 pk11-pchar without the characters a shell or a config file would trip on ('&', "'").
_SAFE = "-._~:[]@!$()*+,="
OBJECT_TYPES = ("private", "public", "cert", "secret-key", "data")


def _encode(value: str | bytes) -> str:
    return quote(value, safe=_SAFE)


def id_value(ckid: bytes) -> str:
    """CKA_ID as RFC 7512 writes it: every byte percent-encoded."""
    return "".join(f"%{b:02x}" for b in ckid)


def make_uri(token: str | None = None, object_label: str | None = None,
             ckid: bytes | None = None, object_type: str | None = None,
             serial: str | None = None) -> str:
    """pkcs11:token=...;object=...;type=... (attributes left out when None)."""
    parts = []
    if token is not None:
        parts.append(f"token={_encode(token)}")
    if serial is not None:
        parts.append(f"serial={_encode(serial)}")
    if object_label is not None:
        parts.append(f"object={_encode(object_label)}")
    if ckid is not None:
        parts.append(f"id={id_value(ckid)}")
    if object_type is not None:
        parts.append(f"type={object_type}")
    return SCHEME + ";".join(parts)


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed pkcs11: URI: path attributes (bytes for id, str otherwise) and query attributes."""

    path: dict[str, str | bytes] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        value = self.path.get(name)
        return value if isinstance(value, str) else None

    @property
    def ckid(self) -> bytes | None:
        value = self.path.get("id")
        return value if isinstance(value, bytes) else None


def parse_uri(text: str) -> Pkcs11Uri:
    """Parse an RFC 7512 URI; ValueError names what is wrong."""
    if not text.lower().startswith(SCHEME):
        raise ValueError(f"{text!r} is not a PKCS#11 URI (pkcs11:token=...;object=...)")
    rest = text[len(SCHEME):]
    path_part, _, query_part = rest.partition("?")
    path: dict[str, str | bytes] = {}
    for item in filter(None, path_part.split(";")):
        name, eq, value = item.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            raise ValueError(f"{item!r} in {text!r} is not name=value")
        if name in path:
            raise ValueError(f"{name!r} appears twice in {text!r}")
        raw = unquote_to_bytes(value)
        if name == "id":
            path[name] = raw
        else:
            try:
                path[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{name} in {text!r} is not UTF-8") from None
    if "type" in path and path["type"] not in OBJECT_TYPES:
        raise ValueError(f"type={path['type']!r}: expected one of {', '.join(OBJECT_TYPES)}")
    query: dict[str, str] = {}
    for item in filter(None, query_part.split("&")):
        name, _, value = item.partition("=")
        query[name.strip().lower()] = unquote_to_bytes(value).decode("utf-8", "replace")
    return Pkcs11Uri(path, query)
