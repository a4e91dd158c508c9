"""What every signature mechanism shares: collecting input, the KMS Sign call, verification."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from ..ck import CKR
from ..core.operations import KeyUse
from ..core.params import MechanismArgs
from ..errors import PKCS11Error
from .hashes import Hash

if TYPE_CHECKING:  # at run time imported by the functions needing them: listing slots does not
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # (docs/performance.md)
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes


@lru_cache(maxsize=64)
def _public_key(spki: bytes) -> PublicKeyTypes:
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    return load_der_public_key(spki)


def public_key(use: KeyUse) -> PublicKeyTypes:
    """The key's public half as cryptography loads it; UnsupportedAlgorithm when it cannot."""
    return _public_key(use.key.spki)


def rsa_public_key(use: KeyUse) -> rsa.RSAPublicKey:
    """The key's public half, for local public-key math."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = _public_key(use.key.spki)
    if not isinstance(key, rsa.RSAPublicKey):
        raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, "not an RSA key")
    return key


def ec_public_key(use: KeyUse) -> ec.EllipticCurvePublicKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = _public_key(use.key.spki)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, "not an EC key")
    return key


def ed25519_public_key(use: KeyUse) -> ed25519.Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = _public_key(use.key.spki)
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, "not an Ed25519 key")
    return key


def key_use(use: KeyUse | None) -> KeyUse:
    """The key of a keyed mechanism: core/operations.py gives every keyed mechanism one."""
    if use is None:
        raise PKCS11Error(CKR.KEY_HANDLE_INVALID, "this mechanism needs a key")
    return use


def no_params(args: MechanismArgs) -> None:
    if args.params:
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "this mechanism takes no parameter")


class Signature:
    """Sign and verify with one mechanism and key. Hash-and-sign mechanisms hash here (any length,
    any number of parts); the others collect the caller's digest or DigestInfo."""

    def __init__(self, use: KeyUse, hash_: Hash | None) -> None:
        self.use = use
        self._hasher = hash_.new() if hash_ is not None else None
        self._data = bytearray()

    # -- what a family defines --
    def to_kms(self, value: bytes) -> tuple[bytes, str]:
        """The input -> (the digest KMS signs with MessageType DIGEST, KMS's algorithm)."""
        raise NotImplementedError

    def kms_input(self, value: bytes) -> tuple[bytes, str, str]:
        """The input -> (KMS's Message, its MessageType, KMS's algorithm): a digest by default."""
        digest, algorithm = self.to_kms(value)
        return digest, "DIGEST", algorithm

    @property
    def max_input(self) -> int:
        """The most a mechanism that does not hash here collects: a digest or DigestInfo is never
        longer than the signature, so more cannot be valid."""
        return self.use.key.spec.signature_bytes

    def from_kms(self, signature: bytes) -> bytes:
        """KMS's signature -> PKCS#11's encoding."""
        return signature

    def to_kms_signature(self, signature: bytes) -> bytes:
        return signature

    def verify_locally(self, value: bytes, signature: bytes) -> None:
        """Raises cryptography's InvalidSignature."""
        raise NotImplementedError

    # -- the operation --
    def output_length(self, data_length: int) -> int:
        return self.use.key.spec.signature_bytes

    def update(self, data: bytes) -> None:
        if self._hasher is not None:
            self._hasher.update(data)
            return
        # Collecting without bound would let *Update grow memory at will.
        if len(self._data) + len(data) > self.max_input:
            raise PKCS11Error(CKR.DATA_LEN_RANGE, "longer than any input this mechanism signs")
        self._data += data

    def _value(self) -> bytes:
        return self._hasher.digest() if self._hasher is not None else bytes(self._data)

    def finish(self) -> bytes:
        message, message_type, algorithm = self.kms_input(self._value())
        return self.from_kms(self.use.backend.sign(self.use.key_ref, message, message_type,
                                                   algorithm))

    def verify(self, signature: bytes) -> None:
        if len(signature) != self.use.key.spec.signature_bytes:
            raise PKCS11Error(CKR.SIGNATURE_LEN_RANGE, f"{len(signature)} bytes")
        value = self._value()
        if self.use.kms_public_operations:
            self.verify_in_kms(value, signature)
            return
        from cryptography.exceptions import InvalidSignature

        try:
            self.verify_locally(value, signature)
        except (InvalidSignature, ValueError):
            raise PKCS11Error(CKR.SIGNATURE_INVALID) from None

    def verify_in_kms(self, value: bytes, signature: bytes) -> None:
        message, message_type, algorithm = self.kms_input(value)
        if not self.use.backend.verify(
            self.use.key_ref, message, message_type, self.to_kms_signature(signature), algorithm
        ):
            raise PKCS11Error(CKR.SIGNATURE_INVALID)
