"""The KMS backend: the synchronous interface the core calls, AWS KMS behind it, KmsError."""

from .aws import AwsKms, backend_for, deadline_for
from .backend import Alias, Connection, KeyMetadata, KmsBackend, PublicKey
from .errors import ERROR_TABLE, KmsError, rv_for
from .loop import set_threads_allowed, shutdown, threads_allowed

__all__ = [
    "ERROR_TABLE",
    "Alias",
    "AwsKms",
    "Connection",
    "KeyMetadata",
    "KmsBackend",
    "KmsError",
    "PublicKey",
    "backend_for",
    "deadline_for",
    "rv_for",
    "set_threads_allowed",
    "shutdown",
    "threads_allowed",
]
