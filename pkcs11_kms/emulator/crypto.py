"""Key material and the sign/verify/RSA-OAEP primitives behind the emulator's KMS operations."""

from __future__ import annotations

import hmac as _hmac
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from . import ed25519ph
from .specs import (
    DIGEST,
    ENCRYPTION_ALGORITHMS,
    MAC_ALGORITHMS,
    RAW,
    SIGNING_ALGORITHMS,
    KeySpec,
)

try:  # ML-DSA needs cryptography >= 47 built on an OpenSSL with ML-DSA (the venv's 50.x has it).
    from cryptography.hazmat.backends.openssl.backend import backend as _backend
    from cryptography.hazmat.primitives.asymmetric import mldsa

    ML_DSA_AVAILABLE = bool(_backend.mldsa_supported())
except ImportError:  # pragma: no cover - depends on the installed cryptography
    mldsa = None  # type: ignore[assignment]
    ML_DSA_AVAILABLE = False


def _ml_dsa(level: object) -> Any:
    if not ML_DSA_AVAILABLE:
        raise UnsupportedAlgorithm("this cryptography build has no ML-DSA")
    return getattr(mldsa, f"MLDSA{level}PrivateKey").generate()


GENERATORS: dict[str, Callable[[Any], Any]] = {  # a KeySpec's params: bits, curve class ...
    "RSA": lambda bits: rsa.generate_private_key(public_exponent=65537, key_size=bits),
    "EC": lambda curve: ec.generate_private_key(curve()),
    "ED25519": lambda _: ed25519.Ed25519PrivateKey.generate(),
    "ML_DSA": _ml_dsa,
}


def generate(spec: KeySpec) -> Any:
    """A new private key for ``spec`` (raises UnsupportedAlgorithm if this build cannot)."""
    return GENERATORS[spec.family](spec.params)


def public_key_der(private_key: Any) -> bytes:
    """The DER SubjectPublicKeyInfo GetPublicKey returns."""
    return private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _hash_arg(hash_cls: type[hashes.HashAlgorithm], message_type: str) -> Any:
    # DIGEST: the message already is the hash; it must never be hashed again.
    return utils.Prehashed(hash_cls()) if message_type == DIGEST else hash_cls()


def _pss(hash_cls: type[hashes.HashAlgorithm]) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=hash_cls().digest_size)


# Each scheme: (sign(private, hash class, message type, message), verify(public, ..., signature)).
SCHEMES: dict[str, tuple[Callable[..., bytes], Callable[..., None]]] = {
    "RSA_PKCS1": (
        lambda k, h, t, m: k.sign(m, padding.PKCS1v15(), _hash_arg(h, t)),
        lambda k, h, t, m, s: k.verify(s, m, padding.PKCS1v15(), _hash_arg(h, t)),
    ),
    "RSA_PSS": (
        lambda k, h, t, m: k.sign(m, _pss(h), _hash_arg(h, t)),
        lambda k, h, t, m, s: k.verify(s, m, _pss(h), _hash_arg(h, t)),
    ),
    "ECDSA": (
        lambda k, h, t, m: k.sign(m, ec.ECDSA(_hash_arg(h, t))),
        lambda k, h, t, m, s: k.verify(s, m, ec.ECDSA(_hash_arg(h, t))),
    ),
    "ED25519": (
        lambda k, h, t, m: k.sign(m),
        lambda k, h, t, m, s: k.verify(s, m),
    ),
    "ED25519_PH": (
        lambda k, h, t, m: ed25519ph.sign(k.private_bytes_raw(), m),
        lambda k, h, t, m, s: _check(ed25519ph.verify(k.public_bytes_raw(), m, s)),
    ),
    "ML_DSA": (
        lambda k, h, t, m: k.sign(m) if t == RAW else k.sign_mu(m),
        lambda k, h, t, m, s: k.verify(s, m) if t == RAW else k.verify_mu(s, m),
    ),
}


def _check(valid: bool) -> None:
    if not valid:
        raise InvalidSignature()


def sign(private_key: Any, algorithm: str, message_type: str, message: bytes) -> bytes:
    """Sign as KMS does; the caller has checked the algorithm, message type and length."""
    info = SIGNING_ALGORITHMS[algorithm]
    return SCHEMES[info.scheme][0](private_key, info.hash, message_type, message)


def verify(private_key: Any, algorithm: str, message_type: str, message: bytes,
           signature: bytes) -> bool:
    """Whether ``signature`` verifies with the public half of ``private_key``."""
    info = SIGNING_ALGORITHMS[algorithm]
    try:
        SCHEMES[info.scheme][1](private_key.public_key(), info.hash, message_type, message,
                                signature)
    except (InvalidSignature, ValueError):
        return False
    return True


def _oaep(algorithm: str) -> padding.OAEP:
    hash_cls = ENCRYPTION_ALGORITHMS[algorithm]
    return padding.OAEP(mgf=padding.MGF1(hash_cls()), algorithm=hash_cls(), label=None)


def oaep_encrypt(private_key: Any, algorithm: str, plaintext: bytes) -> bytes:
    """RSAES-OAEP with the public half of ``private_key``."""
    return private_key.public_key().encrypt(plaintext, _oaep(algorithm))


def oaep_decrypt(private_key: Any, algorithm: str, ciphertext: bytes) -> bytes | None:
    """The plaintext, or None when the ciphertext does not decrypt."""
    try:
        return private_key.decrypt(ciphertext, _oaep(algorithm))
    except ValueError:
        return None


def mac(key: bytes, algorithm: str, message: bytes) -> bytes:
    """The RFC 2104 HMAC GenerateMac returns (``algorithm``: a MAC_ALGORITHMS name)."""
    return _hmac.new(key, message, MAC_ALGORITHMS[algorithm]().name).digest()


def mac_matches(key: bytes, algorithm: str, message: bytes, tag: bytes) -> bool:
    """Whether ``tag`` is the HMAC of ``message`` (compared in constant time)."""
    return _hmac.compare_digest(mac(key, algorithm, message), tag)


def ecdh(private_key: Any, peer_spki_der: bytes) -> bytes:
    """The raw ECDH shared secret (the x-coordinate, field-size bytes) with a peer's DER SPKI.

    ValueError if the peer key does not parse, is not an EC key, or is on another curve."""
    try:
        peer = serialization.load_der_public_key(peer_spki_der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError("the public key is not a DER SubjectPublicKeyInfo EC key") from exc
    curve = peer.curve.name if isinstance(peer, ec.EllipticCurvePublicKey) else None
    if curve != private_key.curve.name:
        raise ValueError(f"the public key is on {curve}, the KMS key on {private_key.curve.name}"
                         if curve else "the public key is not an elliptic curve key")
    return private_key.exchange(ec.ECDH(), peer)


def private_key_der(private_key: Any) -> bytes:
    """The private key as unencrypted PKCS#8 DER (for the emulator's test-only material hook)."""
    return private_key.private_bytes(serialization.Encoding.DER,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
