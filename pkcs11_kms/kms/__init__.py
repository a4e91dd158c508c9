"""The KMS backend: the synchronous interface the core calls, AWS KMS behind it, KmsError."""

from .aws import AwsKms, Backends, backend_for, deadline_for
from .backend import (Alias, Connection, KeyMetadata, KeyRead, KmsBackend, PublicKey,
                      refuses_the_key)
from .errors import ERROR_TABLE, KmsError, rv_for
from .loop import set_threads_allowed, shutdown, threads_allowed

__all__ = [
    "ERROR_TABLE",
    "Alias",
    "AwsKms",
    "Backends",
    "Connection",
    "KeyMetadata",
    "KeyRead",
    "KmsBackend",
    "KmsError",
    "PublicKey",
    "backend_for",
    "deadline_for",
    "refuses_the_key",
    "rv_for",
    "set_threads_allowed",
    "shutdown",
    "threads_allowed",
]
