"""The KMS backend interface the core talks to: synchronous calls, typed results, KmsError."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..config import Connection as Connection  # the config's: one backend per Connection
from .errors import KEY_REFUSALS, KmsError


@dataclass(frozen=True)
class KeyMetadata:
    """What DescribeKey says of a key."""

    key_id: str
    arn: str
    key_spec: str  # RSA_2048, ECC_NIST_P256, SYMMETRIC_DEFAULT ...
    key_usage: str  # SIGN_VERIFY, ENCRYPT_DECRYPT, GENERATE_VERIFY_MAC, KEY_AGREEMENT
    key_state: str  # Enabled, Disabled, PendingDeletion ...


@dataclass(frozen=True)
class PublicKey:
    """What GetPublicKey says of a key (DescribeKey, for a key without a public key)."""

    key_id: str  # the bare key id (uuid or mrk-...)
    arn: str
    der: bytes  # DER SubjectPublicKeyInfo; empty for an HMAC key
    key_spec: str
    key_usage: str


@dataclass(frozen=True)
class Alias:
    name: str  # alias/...
    arn: str
    target_key_id: str | None


@dataclass(frozen=True)
class KeyRead:
    """What read_keys learned of one key. No public_key: the key was not wanted, or KMS refused
    a request about it (`error`)."""

    key: str  # as asked
    metadata: KeyMetadata | None = None
    tags: Mapping[str, str] | None = None  # read only when asked for
    public_key: PublicKey | None = None
    error: KmsError | None = None


# wanted(metadata, tags): asked after DescribeKey (tags None), then after ListResourceTags.
Wanted = Callable[[KeyMetadata, "Mapping[str, str] | None"], bool]


def refuses_the_key(error: KmsError) -> bool:
    """True when KMS refused a request about one key (denied, not found, disabled...): the token
    leaves that key out (kms/errors.py KEY_REFUSALS)."""
    return error.meaning in KEY_REFUSALS


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
    def generate_mac(self, key: str, message: bytes, algorithm: str) -> bytes: ...
    def verify_mac(self, key: str, message: bytes, mac: bytes, algorithm: str) -> bool: ...
    def derive_shared_secret(self, key: str, public_key: bytes) -> bytes: ...  # ECDH's raw x

    # -- batches: the per-key requests of reading a token's keys ---------------------------------
    # A refusal of one key comes back in the result; any other failure raises KmsError and ends
    # the batch. AwsKms runs the requests concurrently and logs nothing (the caller does); these
    # defaults ask one request at a time.

    def inventory(self) -> tuple[list[str], list[Alias]]:
        """Every key id and every alias of the account and region."""
        return self.list_keys(), self.list_aliases()

    def read_keys(self, keys: Sequence[str], wanted: Wanted, with_tags: bool = False
                  ) -> list[KeyRead]:
        """DescribeKey each key; ListResourceTags when asked; GetPublicKey of the wanted ones."""
        out = []
        for key in keys:
            try:
                meta = self.describe_key(key)
                tags = self.list_resource_tags(key) if with_tags and wanted(meta, None) else None
                if not wanted(meta, tags):
                    out.append(KeyRead(key, meta, tags))
                    continue
                out.append(KeyRead(key, meta, tags, self.get_public_key(meta.arn)))
            except KmsError as e:
                if not refuses_the_key(e):
                    raise
                out.append(KeyRead(key, error=e))
        return out

    def public_keys(self, keys: Sequence[str], cached: bool = False
                    ) -> list[PublicKey | KmsError]:
        """GetPublicKey of each key, or KMS's refusal; `cached`: the key cache may answer for
        keys read within key_cache_ttl (kms/keycache.py). This default asks KMS every time."""
        out: list[PublicKey | KmsError] = []
        for key in keys:
            try:
                out.append(self.get_public_key(key))
            except KmsError as e:
                if not refuses_the_key(e):
                    raise
                out.append(e)
        return out
