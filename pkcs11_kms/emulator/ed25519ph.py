"""Ed25519ph (RFC 8032 HashEdDSA, empty context) in pure Python, which cryptography does not offer.

Written from RFC 8032 sections 5.1.1-5.1.7. It is an emulator's signer, not a hardened one: it is
not constant-time. The emulator uses it only for ED25519_PH_SHA_512; its tests check it against the
RFC 8032 7.3 vector and check the shared arithmetic against cryptography's Ed25519 (``pure=True``).
"""

from __future__ import annotations

import hashlib

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
_DOM2_PH = b"SigEd25519 no Ed25519 collisions" + bytes([1, 0])  # phflag 1, empty context

Point = tuple[int, int, int, int]  # extended coordinates X, Y, Z, T with x = X/Z, y = Y/Z


def _add(p: Point, q: Point) -> Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _mul(scalar: int, p: Point) -> Point:
    result: Point = (0, 1, 1, 0)
    while scalar:
        if scalar & 1:
            result = _add(result, p)
        p = _add(p, p)
        scalar >>= 1
    return result


def _recover_x(y: int, sign: int) -> int | None:
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    return _P - x if (x & 1) != sign else x


def _encode(p: Point) -> bytes:
    zinv = pow(p[2], _P - 2, _P)
    x, y = p[0] * zinv % _P, p[1] * zinv % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _decode(data: bytes) -> Point | None:
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


def _base_point() -> Point:
    """B: y = 4/5, x even (RFC 8032 §5.1)."""
    point = _decode((4 * pow(5, _P - 2, _P) % _P).to_bytes(32, "little"))
    assert point is not None
    return point


_B = _base_point()


def _h(*parts: bytes) -> int:
    return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little")


def _expand(seed: bytes) -> tuple[int, bytes]:
    digest = hashlib.sha512(seed).digest()
    a = int.from_bytes(digest[:32], "little")
    a = (a & ((1 << 254) - 8)) | (1 << 254)
    return a, digest[32:]


def public_key(seed: bytes) -> bytes:
    """The 32-byte public key of a 32-byte private key (seed)."""
    return _encode(_mul(_expand(seed)[0], _B))


def _prepare(message: bytes, pure: bool) -> tuple[bytes, bytes]:
    if pure:
        return b"", message
    return _DOM2_PH, hashlib.sha512(message).digest()


def sign(seed: bytes, message: bytes, *, pure: bool = False) -> bytes:
    """Ed25519ph signature of ``message`` (prehashed here with SHA-512); ``pure`` gives Ed25519."""
    if len(seed) != 32:
        raise ValueError("an Ed25519 private key is 32 bytes")
    dom, m = _prepare(message, pure)
    a, prefix = _expand(seed)
    big_a = _encode(_mul(a, _B))
    r = _h(dom, prefix, m) % _L
    big_r = _encode(_mul(r, _B))
    s = (r + _h(dom, big_r, big_a, m) % _L * a) % _L
    return big_r + s.to_bytes(32, "little")


def verify(public: bytes, message: bytes, signature: bytes, *, pure: bool = False) -> bool:
    """Whether ``signature`` is a valid Ed25519ph (or, with ``pure``, Ed25519) signature."""
    if len(signature) != 64:
        return False
    big_a, big_r = _decode(public), _decode(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if big_a is None or big_r is None or s >= _L:
        return False
    dom, m = _prepare(message, pure)
    k = _h(dom, signature[:32], public, m) % _L
    return _encode(_mul(s, _B)) == _encode(_add(big_r, _mul(k, big_a)))
