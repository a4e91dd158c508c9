"""The KMS backend interface the core talks to: synchronous calls, typed results, KmsError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Connection:
    """Where and how to reach KMS; None means the standard AWS chain decides (env, profile...)."""

    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    ca_bundle: str | None = None  # PEM bundle to trust for HTTPS to the endpoint
    connect_timeout: float = 5.0  # seconds
    read_timeout: float = 15.0  # seconds
    max_attempts: int = 3  # botocore retry attempts, first try included
    retry_mode: str = "standard"  # botocore retry mode: standard | adaptive | legacy


@dataclass(frozen=True)
class KeyMetadata:
    """What DescribeKey says of a key."""

    key_id: str
    arn: str
    key_spec: str  # RSA_2048, ECC_NIST_P256, SYMMETRIC_DEFAULT ...
    key_usage: str  # SIGN_VERIFY, ENCRYPT_DECRYPT, GENERATE_VERIFY_MAC, KEY_AGREEMENT
    key_state: str  # Enabled, Disabled, PendingDeletion ...
    description: str = ""


@dataclass(frozen=True)
class PublicKey:
    """What GetPublicKey says of a key."""

    key_id: str  # the bare key id (uuid or mrk-...)
    arn: str
    der: bytes  # DER SubjectPublicKeyInfo
    key_spec: str
    key_usage: str
    signing_algorithms: tuple[str, ...] = ()
    encryption_algorithms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Alias:
    name: str  # alias/...
    arn: str
    target_key_id: str | None


class KmsBackend(Protocol):
    """One KMS endpoint (region, profile, endpoint): every method may raise KmsError."""

    def describe_key(self, key: str) -> KeyMetadata: ...
    def get_public_key(self, key: str) -> PublicKey: ...
    def list_keys(self) -> list[str]: ...  # key ids
    def list_aliases(self) -> list[Alias]: ...
    def list_resource_tags(self, key_id: str) -> dict[str, str]: ...
    def sign(self, key: str, message: bytes, message_type: str, algorithm: str) -> bytes: ...
    def verify(
        self, key: str, message: bytes, message_type: str, signature: bytes, algorithm: str
    ) -> bool: ...
    def encrypt(self, key: str, plaintext: bytes, algorithm: str) -> bytes: ...
    def decrypt(self, key: str, ciphertext: bytes, algorithm: str) -> bytes: ...
    def generate_random(self, length: int) -> bytes: ...
