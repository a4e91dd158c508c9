"""Attribute kinds: one table of CKA type -> how its value is packed to and from bytes (PKCS#11 §4.1)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from datetime import date
from enum import Enum
from typing import Any

from ..ck import CKA

_ULONG = struct.Struct("@L")  # CK_ULONG is the platform's unsigned long, native byte order


class Kind(Enum):
    BOOL = "bool"
    ULONG = "ulong"
    BYTES = "bytes"
    STRING = "string"  # UTF-8 text, not NUL-terminated
    DATE = "date"  # CK_DATE: YYYYMMDD as 8 ASCII digits, or empty
    ULONG_ARRAY = "ulong array"  # CKA_ALLOWED_MECHANISMS


def pack_ulong(value: int) -> bytes:
    return _ULONG.pack(value)


def unpack_ulong(raw: bytes) -> int:
    if len(raw) != _ULONG.size:
        raise ValueError("not a CK_ULONG")
    return _ULONG.unpack(raw)[0]


def _pack_date(value: date | None) -> bytes:
    return b"" if value is None else value.strftime("%Y%m%d").encode()


def _pack_ulongs(values: Iterable[int]) -> bytes:
    return b"".join(_ULONG.pack(v) for v in values)


PACK: dict[Kind, Callable[[Any], bytes]] = {  # the value: bool, int, bytes, str, date, [int]
    Kind.BOOL: lambda v: b"\x01" if v else b"\x00",
    Kind.ULONG: lambda v: pack_ulong(int(v)),
    Kind.BYTES: bytes,
    Kind.STRING: lambda v: str(v).encode("utf-8"),
    Kind.DATE: _pack_date,
    Kind.ULONG_ARRAY: _pack_ulongs,
}

_BOOLS = (
    "TOKEN PRIVATE MODIFIABLE COPYABLE DESTROYABLE TRUSTED SENSITIVE ENCRYPT DECRYPT WRAP UNWRAP "
    "SIGN SIGN_RECOVER VERIFY VERIFY_RECOVER DERIVE EXTRACTABLE LOCAL NEVER_EXTRACTABLE "
    "ALWAYS_SENSITIVE WRAP_WITH_TRUSTED ALWAYS_AUTHENTICATE"
)
_ULONGS = (
    "CLASS KEY_TYPE CERTIFICATE_TYPE CERTIFICATE_CATEGORY KEY_GEN_MECHANISM MODULUS_BITS "
    "JAVA_MIDP_SECURITY_DOMAIN NAME_HASH_ALGORITHM VALUE_LEN PARAMETER_SET"
)
_STRINGS = "LABEL URL UNIQUE_ID"
_DATES = "START_DATE END_DATE"

KIND: dict[int, Kind] = {
    **{CKA[n]: Kind.BOOL for n in _BOOLS.split()},
    **{CKA[n]: Kind.ULONG for n in _ULONGS.split()},
    **{CKA[n]: Kind.STRING for n in _STRINGS.split()},
    **{CKA[n]: Kind.DATE for n in _DATES.split()},
    CKA.ALLOWED_MECHANISMS: Kind.ULONG_ARRAY,
}


def kind_of(attribute: int) -> Kind:
    """Every attribute not listed is a byte string (ids, DER values, big integers)."""
    return KIND.get(attribute, Kind.BYTES)


def pack(attribute: int, value: object) -> bytes:
    return PACK[kind_of(attribute)](value)
