"""Shared helpers of the emulator's fidelity suite (outside conftest, so tests can import them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization

from pkcs11_kms.emulator.specs import KEY_SPECS

# No retries anywhere in this suite: each error must surface as the emulator sent it.
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"},
                  connect_timeout=5, read_timeout=30)


@dataclass
class EmuKey:
    key_id: str
    arn: str
    spec: str
    usage: str
    public_der: bytes

    @property
    def public_key(self) -> Any:
        return serialization.load_der_public_key(self.public_der)

    @property
    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)


def error_code(exc_info: pytest.ExceptionInfo[ClientError]) -> str:
    return exc_info.value.response["Error"]["Code"]


def assert_refused(call: Any, ctx: Any, code: str) -> None:
    """call(ctx) fails with KMS error `code` and HTTP status 400, as KMS's client errors do."""
    with pytest.raises(ClientError) as exc:
        call(ctx)
    assert error_code(exc) == code
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def new_key(kms: Any, spec: str, usage: str) -> EmuKey:
    meta = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]
    der = b""
    if spec in KEY_SPECS:
        der = kms.get_public_key(KeyId=meta["KeyId"])["PublicKey"]
    return EmuKey(meta["KeyId"], meta["Arn"], spec, usage, der)
