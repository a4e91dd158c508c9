"""AwsKms: the KmsBackend on AWS KMS (aiobotocore), one lazily made client per Connection."""

from __future__ import annotations

import concurrent.futures
import os
import re
import threading
from typing import Any

from . import loop
from .backend import Alias, Connection, KeyMetadata, KmsBackend, PublicKey
from .errors import KmsError, failure

_BACKOFF_CAP = 20.0  # botocore's largest pause between two attempts
_SLACK = 2.0  # seconds on top of the attempts' own timeouts: signing, scheduling, a slow host
_SETUP_TIMEOUT = 30.0  # importing aiobotocore and making a client (may resolve credentials)
_POOL_CONNECTIONS = 32  # concurrent HTTPS connections per client: many C threads may sign at once
_DIGEST_LENGTHS = {"SHA_256": 32, "SHA_384": 48, "SHA_512": 64}
# A validation message may quote the value it refused: never log request data that way.
_DATA_ECHO = re.compile(
    r"Value '[^']*' at '(message|plaintext|ciphertextBlob|signature)'", re.IGNORECASE
)


def deadline_for(connection: Connection) -> float:
    """Seconds one KMS call may take before the host gets KmsError("Timeout"): every attempt's
    connect and read timeouts, botocore's largest backoffs between them, and some slack."""
    attempts = max(1, connection.max_attempts)
    backoff = sum(min(_BACKOFF_CAP, 2.0 ** (i - 1)) for i in range(1, attempts))
    per_attempt = connection.connect_timeout + connection.read_timeout
    return attempts * per_attempt + backoff + _SLACK


class AwsKms(KmsBackend):
    """KMS at one Connection. Thread-safe: every call runs on the KMS loop (loop.py)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.deadline = deadline_for(connection)
        self._client_key = ("kms-client", connection)
        self._ready_generation = -1  # the loop generation our client was made on
        self._public_keys: dict[str, PublicKey] = {}  # key as asked -> GetPublicKey, on success

    # -- the KmsBackend calls -----------------------------------------------------------------

    def describe_key(self, key: str) -> KeyMetadata:
        meta = self._call("DescribeKey", key, KeyId=key)["KeyMetadata"]
        return KeyMetadata(
            key_id=meta["KeyId"],
            arn=meta["Arn"],
            key_spec=meta.get("KeySpec") or meta.get("CustomerMasterKeySpec", ""),
            key_usage=meta.get("KeyUsage", ""),
            key_state=meta.get("KeyState", ""),
            description=meta.get("Description", ""),
        )

    def get_public_key(self, key: str) -> PublicKey:
        cached = self._public_keys.get(key)
        if cached is not None:
            return cached
        answer = self._call("GetPublicKey", key, KeyId=key)
        answered = answer["KeyId"]  # KMS answers with the key ARN here (moto: the bare id)
        arn = answered if answered.startswith("arn:") else _key_arn(key)
        public_key = PublicKey(
            key_id=answered.rsplit(":key/", 1)[-1],
            arn=arn,
            der=answer["PublicKey"],
            key_spec=answer.get("KeySpec") or answer.get("CustomerMasterKeySpec", ""),
            key_usage=answer.get("KeyUsage", ""),
            signing_algorithms=tuple(answer.get("SigningAlgorithms", ())),
            encryption_algorithms=tuple(answer.get("EncryptionAlgorithms", ())),
        )
        self._public_keys[key] = public_key
        return public_key

    def list_keys(self) -> list[str]:
        return [k["KeyId"] for k in self._pages("ListKeys", None, "Keys")]

    def list_aliases(self) -> list[Alias]:
        return [
            Alias(a["AliasName"], a.get("AliasArn", ""), a.get("TargetKeyId"))
            for a in self._pages("ListAliases", None, "Aliases")
        ]

    def list_resource_tags(self, key_id: str) -> dict[str, str]:
        tags = self._pages("ListResourceTags", key_id, "Tags", KeyId=key_id)
        return {t["TagKey"]: t["TagValue"] for t in tags}

    def sign(self, key: str, message: bytes, message_type: str, algorithm: str) -> bytes:
        answer = self._call(
            "Sign",
            key,
            KeyId=key,
            Message=message,
            MessageType=message_type,
            SigningAlgorithm=algorithm,
        )
        return bytes(answer["Signature"])

    def verify(
        self, key: str, message: bytes, message_type: str, signature: bytes, algorithm: str
    ) -> bool:
        try:
            answer = self._call(
                "Verify",
                key,
                quiet=("KMSInvalidSignatureException",),
                KeyId=key,
                Message=message,
                MessageType=message_type,
                Signature=signature,
                SigningAlgorithm=algorithm,
            )
        except KmsError as error:
            if error.code == "KMSInvalidSignatureException":  # KMS's way of saying "False"
                return False
            raise
        return bool(answer.get("SignatureValid"))

    def encrypt(self, key: str, plaintext: bytes, algorithm: str) -> bytes:
        answer = self._call(
            "Encrypt", key, KeyId=key, Plaintext=plaintext, EncryptionAlgorithm=algorithm
        )
        return bytes(answer["CiphertextBlob"])

    def decrypt(self, key: str, ciphertext: bytes, algorithm: str) -> bytes:
        answer = self._call(
            "Decrypt", key, KeyId=key, CiphertextBlob=ciphertext, EncryptionAlgorithm=algorithm
        )
        return bytes(answer["Plaintext"])

    def generate_random(self, length: int) -> bytes:
        return bytes(self._call("GenerateRandom", None, NumberOfBytes=length)["Plaintext"])

    # -- doctor: may we use this key? (DryRun: KMS checks permission and state, does nothing) --

    def dry_run_sign(self, key: str, algorithm: str) -> bool:
        """True when KMS says Sign would succeed; False when the endpoint ignores DryRun (it
        signed); KmsError with the reason when it would fail."""
        digest = bytes(_DIGEST_LENGTHS.get(algorithm[-7:], 32))
        return self._dry_run(
            "Sign",
            key,
            KeyId=key,
            Message=digest,
            MessageType="DIGEST",
            SigningAlgorithm=algorithm,
        )

    def dry_run_decrypt(self, key: str, algorithm: str) -> bool:
        """Like dry_run_sign, with a ciphertext made locally under the key's public key."""
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        public = serialization.load_der_public_key(self.get_public_key(key).der)
        digest = hashes.SHA1() if algorithm.endswith("SHA_1") else hashes.SHA256()
        oaep = padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
        ciphertext = public.encrypt(b"\0", oaep)  # type: ignore[union-attr]
        return self._dry_run(
            "Decrypt", key, KeyId=key, CiphertextBlob=ciphertext, EncryptionAlgorithm=algorithm
        )

    def _dry_run(self, operation: str, key: str, **params: Any) -> bool:
        try:
            self._call(operation, key, quiet=("DryRunOperationException",), DryRun=True, **params)
        except KmsError as error:
            if error.code == "DryRunOperationException":
                return True
            raise
        return False

    # -- plumbing -----------------------------------------------------------------------------

    def _pages(self, operation: str, key: str | None, field: str, **params: Any) -> list[Any]:
        items: list[Any] = []
        marker = None
        while True:
            page = self._call(operation, key, **params, **({"Marker": marker} if marker else {}))
            items.extend(page.get(field, ()))
            marker = page.get("NextMarker")
            if not page.get("Truncated") or not marker:
                return items

    def _call(
        self, operation: str, key: str | None, quiet: tuple[str, ...] = (), **params: Any
    ) -> dict[str, Any]:
        """One KMS request on the loop within the deadline; any failure becomes a KmsError that
        has logged its line (codes in `quiet` are expected answers: not logged)."""
        try:
            if self._ready_generation != loop.generation():
                loop.run(self._client(), _SETUP_TIMEOUT)  # first call: import, make the client
                self._ready_generation = loop.generation()
            return loop.run(self._request(operation, params), self.deadline)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # asyncio.CancelledError is a BaseException
            raise _translate(exc, operation, key, quiet) from None

    async def _request(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        client = await self._client()
        answer: dict[str, Any] = await getattr(client, _method_name(operation))(**params)
        return answer

    async def _client(self) -> Any:
        """This Connection's client on the running loop, made once (a failure is retried)."""
        import asyncio

        resources = loop.resources()
        task = resources.get(self._client_key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = resources[self._client_key] = asyncio.ensure_future(self._make_client())
        return await asyncio.shield(task)  # a caller's deadline must not cancel the shared setup

    async def _make_client(self) -> Any:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import AioSession

        from .. import __version__

        c = self.connection
        config = AioConfig(
            connect_timeout=c.connect_timeout,
            read_timeout=c.read_timeout,
            retries={"total_max_attempts": c.max_attempts, "mode": c.retry_mode},
            max_pool_connections=_POOL_CONNECTIONS,
            user_agent_extra=f"pkcs11-kms/{__version__}",
        )
        # As in the AWS CLI, AWS_REGION wins over AWS_DEFAULT_REGION (botocore reads only the
        # latter, and the profile's region); AWS_PROFILE and AWS_ENDPOINT_URL_KMS botocore reads.
        region = c.region or os.environ.get("AWS_REGION") or None
        context = AioSession(profile=c.profile).create_client(
            "kms",
            region_name=region,
            endpoint_url=c.endpoint_url,
            verify=c.ca_bundle,
            config=config,
        )
        client = await context.__aenter__()
        loop.add_cleanup(lambda: context.__aexit__(None, None, None))
        return client


def _key_arn(key: str) -> str:
    return key if key.startswith("arn:") and ":key/" in key else ""


def _method_name(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()  # GetPublicKey -> get_public_key


def _exception_codes() -> tuple[tuple[type[BaseException], str], ...]:
    """Failures that never got a KMS answer -> our codes in the error table. First match wins."""
    import asyncio

    from botocore import exceptions as bx

    return (
        (loop.DeadlineExceeded, "Timeout"),
        (loop.ReentrantCall, "Reentrant"),
        (loop.InterpreterExiting, "Cancelled"),
        (concurrent.futures.CancelledError, "Cancelled"),
        (asyncio.CancelledError, "Cancelled"),
        (bx.ConnectTimeoutError, "Timeout"),
        (bx.ReadTimeoutError, "Timeout"),
        (bx.SSLError, "TlsError"),
        (bx.ConnectionError, "NetworkError"),  # EndpointConnectionError, ProxyConnectionError
        (bx.HTTPClientError, "NetworkError"),  # ConnectionClosedError ...
        (bx.NoCredentialsError, "NoCredentials"),
        (bx.PartialCredentialsError, "NoCredentials"),
        (bx.CredentialRetrievalError, "NoCredentials"),
        (bx.NoRegionError, "NoRegion"),
        (bx.ProfileNotFound, "ProfileNotFound"),
        (bx.ParamValidationError, "ValidationException"),
        (TimeoutError, "Timeout"),
        (OSError, "NetworkError"),
    )


def _translate(
    exc: BaseException, operation: str, key: str | None, quiet: tuple[str, ...] = ()
) -> KmsError:
    if isinstance(exc, KmsError):
        return exc
    request_id = None
    from botocore.exceptions import ClientError, ParamValidationError

    if isinstance(exc, ClientError):  # KMS answered with an error
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code = error.get("Code") or str(meta.get("HTTPStatusCode", "Unknown"))
        request_id = meta.get("RequestId")
        message = _DATA_ECHO.sub(r"Value at '\1'", error.get("Message", ""))
    else:
        code = next((c for cls, c in _exception_codes() if isinstance(exc, cls)), None)
        if code is None:
            code, message = type(exc).__name__, ""  # its text might quote request data
        elif isinstance(exc, ParamValidationError):  # its report quotes values: keep names only
            message = "invalid " + ", ".join(re.findall(r"parameter (\w+)", str(exc)))
        else:
            message = str(exc)
    if code in quiet:
        return KmsError(code, operation, key, request_id, message)
    return failure(code, operation, key, request_id, message)


_backends: dict[Connection, AwsKms] = {}
_backends_lock = threading.Lock()


def _renew_lock() -> None:
    global _backends_lock
    _backends_lock = threading.Lock()


os.register_at_fork(after_in_child=_renew_lock)


def backend_for(connection: Connection) -> KmsBackend:
    """The one AwsKms for this Connection in this process (its client and public-key cache)."""
    with _backends_lock:
        backend = _backends.get(connection)
        if backend is None:
            backend = _backends[connection] = AwsKms(connection)
        return backend
