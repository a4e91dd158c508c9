"""The KMS backend: the synchronous interface the core calls, AWS KMS behind it, KmsError.

It speaks KMS only: what a failure means to PKCS#11 is the core's (core/kms_errors.py).
"""

from .aws import AwsKms, Backends, backend_for, deadline_for
from .backend import (Alias, Connection, KeyMetadata, KeyRead, KmsBackend, PublicKey,
                      refuses_the_key)
from .errors import ERROR_TABLE, KmsError, Meaning
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
    "Meaning",
    "PublicKey",
    "backend_for",
    "deadline_for",
    "refuses_the_key",
    "set_threads_allowed",
    "shutdown",
    "threads_allowed",
]
