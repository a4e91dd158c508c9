"""AwsKms: the KmsBackend on AWS KMS (aiobotocore), one lazily made client per Connection."""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import re
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from .. import hostsafe, logs, trust
from ..config import insecure_http
from . import keycache, loop
from .backend import (Alias, Connection, KeyMetadata, KeyRead, KmsBackend, PublicKey, Wanted,
                      refuses_the_key)
from .errors import KmsError
from .specs import (
    ECDH,
    RAW_ONLY,
    curve_class,
    digest_bytes,
    has_public_key,
    hash_class,
    hash_of,
)

_BACKOFF_CAP = 20.0  # botocore's largest pause between two attempts
_SLACK = 2.0  # seconds on top of the attempts' own timeouts: signing, scheduling, a slow host
_SETUP_TIMEOUT = 30.0  # importing aiobotocore and making a client (may resolve credentials)
# Concurrent HTTPS connections per client: in threaded mode one client serves every host thread
# (64 signing at once must not queue for a connection); a threadless loop makes one call at a time.
_POOL_CONNECTIONS = 128
_IN_FLIGHT = 32  # per-key requests a batch runs at once (docs/design.md, "Reading the keys")
T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("pkcs11_kms.kms")
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
        # Key as asked -> GetPublicKey, on success. It lives as long as this backend: the module's
        # until C_Finalize. Batches fill it by key ARN (a key's public key never changes) and
        # never read it by alias (an alias may be re-pointed).
        self._public_keys: dict[str, PublicKey] = {}
        self._cache = keycache.for_connection(connection)  # across processes (keycache.py)
        self._from_cache = False  # keys came from the cache and no client was made since
        _instances.add(self)

    # -- the KmsBackend calls -----------------------------------------------------------------

    def describe_key(self, key: str) -> KeyMetadata:
        return _metadata(self._call("DescribeKey", key, KeyId=key))

    def get_public_key(self, key: str) -> PublicKey:
        cached = self._public_keys.get(key)
        if cached is not None:
            return cached
        public_key = _public_key(self._call("GetPublicKey", key, KeyId=key), key)
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
        answer = self._call("Sign", key, **_sign_request(key, message, message_type, algorithm))
        return bytes(answer["Signature"])

    def verify(
        self, key: str, message: bytes, message_type: str, signature: bytes, algorithm: str
    ) -> bool:
        try:
            answer = self._call(
                "Verify",
                key,
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

    def generate_mac(self, key: str, message: bytes, algorithm: str) -> bytes:
        answer = self._call("GenerateMac", key, KeyId=key, Message=message, MacAlgorithm=algorithm)
        return bytes(answer["Mac"])

    def verify_mac(self, key: str, message: bytes, mac: bytes, algorithm: str) -> bool:
        try:
            answer = self._call("VerifyMac", key, KeyId=key, Message=message, Mac=mac,
                                MacAlgorithm=algorithm)
        except KmsError as error:
            if error.code == "KMSInvalidMacException":  # KMS's way of saying "False"
                return False
            raise
        return bool(answer.get("MacValid"))

    def derive_shared_secret(self, key: str, public_key: bytes) -> bytes:
        answer = self._call("DeriveSharedSecret", key, KeyId=key, KeyAgreementAlgorithm="ECDH",
                            PublicKey=public_key)
        return bytes(answer["SharedSecret"])

    # -- batches: reading a token's keys (docs/design.md, "Reading the keys") -------------------

    def inventory(self) -> tuple[list[str], list[Alias]]:
        async def both() -> tuple[list[str], list[Alias]]:
            import asyncio

            async with asyncio.TaskGroup() as group:
                keys = group.create_task(self._pages_async("ListKeys", None, "Keys", Limit=1000))
                aliases = group.create_task(
                    self._pages_async("ListAliases", None, "Aliases", Limit=100))
            return (
                [k["KeyId"] for k in keys.result()],
                [Alias(a["AliasName"], a.get("AliasArn", ""), a.get("TargetKeyId"))
                 for a in aliases.result()],
            )

        return self._batch("ListKeys", both(), 8 * _IN_FLIGHT)  # pages, one after another

    def read_keys(self, keys: Sequence[str], wanted: Wanted, with_tags: bool = False
                  ) -> list[KeyRead]:
        async def one(key: str) -> KeyRead:
            try:
                meta = _metadata(await self._ask("DescribeKey", key, KeyId=key))
                if not wanted(meta, None):
                    return KeyRead(key, meta)
                tags = None
                if with_tags:
                    listed = await self._pages_async("ListResourceTags", key, "Tags", KeyId=key)
                    tags = {t["TagKey"]: t["TagValue"] for t in listed}
                    if not wanted(meta, tags):
                        return KeyRead(key, meta, tags)
                public = self._public_keys.get(meta.arn)
                if public is None and self._cache is not None:
                    public = self._cache.by_arn(meta.arn)  # a key's public key never changes
                    if public is not None:
                        self._public_keys[meta.arn] = public
                if public is None and not has_public_key(meta.key_spec):
                    public = _without_public_key(meta)
                elif public is None:
                    answer = await self._ask("GetPublicKey", meta.arn, KeyId=meta.arn)
                    public = self._public_keys[meta.arn] = _public_key(answer, meta.arn)
                return KeyRead(key, meta, tags, public)
            except KmsError as e:
                if not refuses_the_key(e):
                    raise
                return KeyRead(key, error=e)

        reads: list[KeyRead] = self._batch("DescribeKey", self._each(one, keys), 3 * len(keys))
        if self._cache is not None:
            self._cache.remember([(None, r.public_key) for r in reads
                                  if r.public_key is not None and r.public_key.der])
        return reads

    def public_keys(self, keys: Sequence[str], cached: bool = False
                    ) -> list[PublicKey | KmsError]:
        if cached and self._cache is not None:
            found = [self._cache.lookup(key) for key in keys]
            if all(found):  # every key read within key_cache_ttl: KMS is not asked at all
                self._from_cache = True
                return [p for p in found if p is not None]
        answers = self._read_public_keys(keys)
        if self._cache is not None:
            self._cache.remember([(k, a) for k, a in zip(keys, answers, strict=True)
                                  if isinstance(a, PublicKey)])
        return answers

    def _read_public_keys(self, keys: Sequence[str]) -> list[PublicKey | KmsError]:
        async def one(key: str) -> PublicKey | KmsError:
            try:
                try:
                    public = _public_key(await self._ask("GetPublicKey", key, KeyId=key), key)
                except KmsError as e:
                    if e.code != "UnsupportedOperationException":
                        raise
                    # An HMAC (or symmetric) key: what DescribeKey says instead
                    public = _without_public_key(
                        _metadata(await self._ask("DescribeKey", key, KeyId=key)))
            except KmsError as e:
                if not refuses_the_key(e):
                    raise
                return e
            self._public_keys[public.arn] = public  # by ARN: an alias may be re-pointed
            return public

        # two requests for a key without a public key (HMAC): GetPublicKey, then DescribeKey
        return self._batch("GetPublicKey", self._each(one, keys), 2 * len(keys))

    async def _each(self, one: Callable[[T], Awaitable[R]], items: Sequence[T]) -> list[R]:
        """one(item) for every item, _IN_FLIGHT at a time; the first exception cancels the rest."""
        import asyncio

        if not items:
            return []
        results: list[Any] = [None] * len(items)
        queue = iter(enumerate(items))

        async def worker() -> None:
            for i, item in queue:  # the workers share one iterator
                results[i] = await one(item)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(_IN_FLIGHT, len(items))):
                group.create_task(worker())
        return results

    async def _ask(self, operation: str, key: str | None, **params: Any) -> dict[str, Any]:
        """One request of a batch, within the per-call deadline."""
        import asyncio

        try:
            async with asyncio.timeout(self.deadline):
                return await self._request(operation, params)
        except Exception as exc:  # CancelledError (the batch ends) is not an Exception
            raise self._failed(exc, operation, key) from None

    async def _pages_async(self, operation: str, key: str | None, field: str, **params: Any
                           ) -> list[Any]:
        items: list[Any] = []
        marker = None
        while True:
            more: dict[str, str] = {"Marker": marker} if marker else {}
            page = await self._ask(operation, key, **params, **more)
            items.extend(page.get(field, ()))
            marker = page.get("NextMarker")
            if not page.get("Truncated") or not marker:
                return items

    def _batch(self, operation: str, work: Any, requests: int) -> Any:
        """Run a batch coroutine on the KMS loop with one loop.run(): the client's setup, then
        every round of _IN_FLIGHT requests, each within its own per-call deadline. Raises
        KmsError."""
        rounds = 1 + math.ceil(requests / _IN_FLIGHT)

        async def with_client() -> Any:
            import asyncio

            try:
                async with asyncio.timeout(_SETUP_TIMEOUT):
                    await self._client()
            except BaseException:
                work.close()
                raise
            return await work

        try:
            return loop.run(with_client(), _SETUP_TIMEOUT + rounds * self.deadline)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            work.close()  # loop.run may have refused to start with_client (at exit, re-entry)
            while isinstance(exc, BaseExceptionGroup) and exc.exceptions:  # from a TaskGroup
                exc = exc.exceptions[0]
            raise _translate(exc, operation, None) from None

    # -- doctor: may we use this key? (DryRun: KMS checks permission and state, does nothing) --

    def dry_run_sign(self, key: str, algorithm: str) -> bool:
        """True when KMS says Sign would succeed; False when the endpoint ignores DryRun (it
        signed); KmsError with the reason when it would fail."""
        if algorithm in RAW_ONLY:  # KMS signs these over the message itself
            message, message_type = bytes(32), "RAW"
        else:
            hash_ = hash_of(algorithm)
            message, message_type = bytes(digest_bytes(hash_) if hash_ else 32), "DIGEST"
        return self._dry_run("Sign", key, **_sign_request(key, message, message_type, algorithm))

    def dry_run_mac(self, key: str, algorithm: str) -> bool:
        """Like dry_run_sign, for GenerateMac."""
        return self._dry_run("GenerateMac", key, KeyId=key, Message=bytes(32),
                             MacAlgorithm=algorithm)

    def dry_run_derive(self, key: str, curve: str) -> bool:
        """Like dry_run_sign, for DeriveSharedSecret with a throwaway peer key on `curve`."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        peer = ec.generate_private_key(curve_class(curve)()).public_key()
        der = peer.public_bytes(serialization.Encoding.DER,
                                serialization.PublicFormat.SubjectPublicKeyInfo)
        return self._dry_run("DeriveSharedSecret", key, KeyId=key, KeyAgreementAlgorithm=ECDH,
                             PublicKey=der)

    def dry_run_decrypt(self, key: str, algorithm: str) -> bool:
        """Like dry_run_sign, with a ciphertext made locally under the key's public key."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        public = serialization.load_der_public_key(self.get_public_key(key).der)
        digest = hash_class(hash_of(algorithm) or "SHA_256")()
        oaep = padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
        ciphertext = public.encrypt(b"\0", oaep)  # type: ignore[union-attr]
        return self._dry_run(
            "Decrypt", key, KeyId=key, CiphertextBlob=ciphertext, EncryptionAlgorithm=algorithm
        )

    def _dry_run(self, operation: str, key: str, **params: Any) -> bool:
        try:
            self._call(operation, key, DryRun=True, **params)
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
        self, operation: str, key: str | None, **params: Any
    ) -> dict[str, Any]:
        """One KMS request on the loop within the deadline; any failure becomes a KmsError."""
        try:
            if self._ready_generation != loop.generation():
                loop.run(self._client(), _SETUP_TIMEOUT)  # first call: import, make the client
                self._ready_generation = loop.generation()
            return loop.run(self._request(operation, params), self.deadline)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # asyncio.CancelledError is a BaseException
            raise self._failed(exc, operation, key) from None

    def unprepared(self) -> bool:
        """Whether keys came from the cache and this process has made no client since."""
        return self._from_cache and self._ready_generation != loop.generation()

    def prepare_for_children(self) -> None:
        """Before a fork, when keys came from the cache: import the KMS stack and make the client
        now, while the process may still read the files they come from (docs/design.md, "Key
        cache"). A child (nginx's worker, which then drops privileges) makes its own client from
        what the parent loaded. Never raises: the fork goes on."""
        if not self.unprepared():
            return
        self._from_cache = False  # once: a failure is the first call's to report, as without

        async def client_and_tls() -> None:
            import asyncio

            client = await self._client()
            # and the TLS contexts, which read the CA bundle (_ca_text), on a thread of ours
            http = getattr(getattr(client, "_endpoint", None), "http_session", None)
            build = getattr(http, "_build_ssl_contexts", None)
            if build is not None:
                await asyncio.get_running_loop().run_in_executor(None, build, None)

        try:
            loop.run(client_and_tls(), _SETUP_TIMEOUT)
            self._ready_generation = loop.generation()
        except Exception as exc:  # the child's first call meets it again, and says so
            log.info("KMS client not made before fork: %s", type(exc).__name__)

    def _failed(self, exc: BaseException, operation: str, key: str | None) -> KmsError:
        """The KmsError of a failed request; KMS refusing a key also drops it from the cache."""
        error = _translate(exc, operation, key)
        if key is not None and self._cache is not None and refuses_the_key(error):
            self._cache.forget(key)
        return error

    async def _request(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        client = await self._client()
        try:
            answer: dict[str, Any] = await getattr(client, _method_name(operation))(**params)
        finally:
            logs.guard_libraries()  # loggers the request's imports made
        return answer

    async def _client(self) -> Any:
        """This Connection's client on the running loop, made once (a failure is retried)."""
        import asyncio

        # botocore's debug records of our requests hold their data (docs/security.md, "Logs")
        logs.mark_module_loop(asyncio.get_running_loop())
        logs.guard_libraries()
        resources = loop.resources()
        task = resources.get(self._client_key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = resources[self._client_key] = asyncio.ensure_future(self._make_client())
        return await asyncio.shield(task)  # a caller's deadline must not cancel the shared setup

    async def _make_client(self) -> Any:
        from aiobotocore.config import AioConfig

        from .. import __version__

        logs.guard_libraries()  # the loggers importing aiobotocore made
        c = self.connection
        privileged = trust.privileged()
        config = AioConfig(
            connect_timeout=c.connect_timeout,
            read_timeout=c.read_timeout,
            retries={"total_max_attempts": c.max_attempts, "mode": c.retry_mode},
            max_pool_connections=_POOL_CONNECTIONS,
            user_agent_extra=f"pkcs11-kms/{__version__}",
            http_session_cls=_http_session_class(),
            # A privileged process: no endpoint from AWS_ENDPOINT_URL* or a config file.
            ignore_configured_endpoint_urls=True if privileged else None,
        )
        # No region named: botocore's own; AWS_PROFILE and AWS_ENDPOINT_URL_KMS botocore reads.
        named = named_region(c)
        session = _session(c.profile)
        if privileged:  # docs/security.md, "Privileged hosts": not $HOME's nor $AWS_CONFIG_FILE's
            from .privileged import restrict

            restrict(session)  # nor credentials from where the caller's environment points
            aws = os.path.join(trust.home({}), ".aws")
            session.set_config_variable("config_file", os.path.join(aws, "config"))
            session.set_config_variable("credentials_file", os.path.join(aws, "credentials"))
        context = session.create_client(
            "kms",
            region_name=named[0] if named else None,
            endpoint_url=c.endpoint_url,
            # TLS is always verified: against ca_bundle, or botocore's default CAs. None would
            # let AWS_CA_BUNDLE or REQUESTS_CA_BUNDLE choose: not in a privileged process.
            verify=c.ca_bundle or (True if privileged else None),
            config=config,
        )
        client = await context.__aenter__()
        loop.add_cleanup(lambda: context.__aexit__(None, None, None))
        _cache_user_agent(client)
        logs.guard_libraries()  # and the ones making the client made
        endpoint = client.meta.endpoint_url
        if insecure_http(endpoint) and not c.allow_insecure_http:
            # from AWS_ENDPOINT_URL_KMS or ~/.aws/config: the config's own is refused at load
            raise KmsError("NetworkError", "connect", None, None,
                           f"refusing plain http:// to {endpoint}, not a loopback address: use "
                           "https://, or allow_insecure_http = true in the config "
                           "(docs/security.md, \"Transport\")")
        return client


def named_region(connection: Connection) -> tuple[str, str] | None:
    """The region the config or AWS_REGION names, and which of them; None: botocore resolves it
    (AWS_DEFAULT_REGION, the profile's region). As in the AWS CLI, AWS_REGION wins over those:
    botocore reads only them."""
    if connection.region:
        return connection.region, "config"
    region = trust.environ().get("AWS_REGION")
    if region:
        return region, "AWS_REGION"
    return None


# Per profile: botocore's event handlers and data loader, made once. Each loop of the threadless
# pool has a client (and session) of its own: a copy of the handlers and the shared loader (which
# has read the KMS model) make a session in ~3 ms instead of ~60 ms.
_templates: dict[str | None, tuple[Any, Any]] = {}


_tls_contexts: dict[tuple[Any, ...], Any] = {}
_tls_lock = threading.Lock()  # helper threads and host threads build contexts at once
_http_session: list[type] = []
_ca_texts: dict[str, tuple[int, str]] = {}  # CA bundle path -> (the pid that read it, its PEM)


def _ca_text(path: str) -> str:
    """A CA bundle's certificates as PEM text, read now. A forked child that cannot read the file
    any more (nginx's worker after dropping privileges, docs/design.md "Key cache") uses what its
    parent read: its contexts must be new (hostsafe.py: no OpenSSL object crosses a fork)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        kept = _ca_texts.get(path)
        if kept is None or kept[0] == os.getpid():
            raise
        return kept[1]
    # cadata takes ASCII only: certifi's bundle has UTF-8 in its comments, which OpenSSL skips
    text = data.decode("ascii", errors="ignore")
    _ca_texts[path] = (os.getpid(), text)
    return text


def _http_session_class() -> type:
    """aiobotocore's HTTP session, with the TLS contexts (CA bundle loaded: ~50 ms of CPU each)
    shared by the clients of one loop generation: the threadless pool makes a client per loop.
    SSLContext is thread-safe; a new generation (after C_Finalize) reads the files again."""
    if not _http_session:
        from aiobotocore.httpsession import AIOHTTPSession

        class SharedTls(AIOHTTPSession):
            def _build_verify_context(self) -> Any:  # aiobotocore >= 3: its CA file, read here
                if not self._verify:
                    return super()._build_verify_context()
                from botocore.httpsession import get_cert_path

                context = self._get_ssl_context()
                context.check_hostname = True
                ca_certs = get_cert_path(self._verify)
                if ca_certs:
                    context.load_verify_locations(cadata=_ca_text(ca_certs))
                return context

            def _build_ssl_contexts(self, *args: Any, **kwargs: Any) -> Any:
                key = (loop.generation(), self._verify, self._cert_file, self._key_file, args,
                       tuple(sorted(kwargs.items())))
                with _tls_lock:
                    contexts = _tls_contexts.get(key)
                if contexts is None:  # not under the lock: reading the CA bundle takes a while
                    contexts = super()._build_ssl_contexts(*args, **kwargs)
                    with _tls_lock:
                        for old in [k for k in _tls_contexts if k[0] != key[0]]:
                            del _tls_contexts[old]
                        contexts = _tls_contexts.setdefault(key, contexts)
                return contexts

        _http_session.append(SharedTls)
    return _http_session[0]


def _session(profile: str | None) -> Any:
    import copy

    from aiobotocore.hooks import AioHierarchicalEmitter
    from aiobotocore.session import AioSession

    template = _templates.get(profile)
    if template is None:
        handlers = AioHierarchicalEmitter()
        first = AioSession(event_hooks=handlers, profile=profile)  # registers botocore's handlers
        template = _templates[profile] = (handlers, first.get_component("data_loader"))
    handlers, loader = template
    session = AioSession(event_hooks=copy.copy(handlers), include_builtin_handlers=False,
                         profile=profile)
    session.register_component("data_loader", loader)
    return session


def _cache_user_agent(client: Any) -> None:
    """botocore builds the User-Agent string twice a request (when serializing, and again in a
    request-created handler), ~10% of a request's CPU (docs/performance.md, "What limits each
    figure"). For one client it depends only on the feature ids in use (the client's and the
    request context's): the rest (SDK and OS metadata, config, appid, user_agent_extra) is fixed
    when the client is made. So this client's builder keeps the string it built for each set of
    features and gives it again; a new set of features is built by botocore as before."""
    from botocore.context import get_context

    creator: Any = getattr(client, "_user_agent_creator", None)
    build = getattr(creator, "to_string", None)
    if build is None or not hasattr(creator, "_client_features"):
        return  # another botocore: leave it as it is
    built: dict[frozenset[str], str] = {}

    def to_string() -> str:
        context = get_context()
        features = frozenset(creator._client_features or ()).union(
            context.features if context is not None else ())
        text = built.get(features)
        if text is None:
            text = build()
            if len(built) >= 16:  # a handful at most in practice; never grow without bound
                built.clear()
            built[features] = text
        return text

    creator.to_string = to_string  # botocore's handler calls self.to_string(): this one


def _sign_request(key: str, message: bytes, message_type: str, algorithm: str
                  ) -> dict[str, Any]:
    return {"KeyId": key, "Message": message, "MessageType": message_type,
            "SigningAlgorithm": algorithm}


def _key_arn(key: str) -> str:
    return key if key.startswith("arn:") and ":key/" in key else ""


def _metadata(answer: dict[str, Any]) -> KeyMetadata:
    meta = answer["KeyMetadata"]
    return KeyMetadata(
        key_id=meta["KeyId"],
        arn=meta["Arn"],
        key_spec=meta.get("KeySpec") or meta.get("CustomerMasterKeySpec", ""),
        key_usage=meta.get("KeyUsage", ""),
        key_state=meta.get("KeyState", ""),
    )


def _public_key(answer: dict[str, Any], key: str) -> PublicKey:
    answered = answer["KeyId"]  # KMS answers with the key ARN here (moto: the bare id)
    return PublicKey(
        key_id=answered.rsplit(":key/", 1)[-1],
        arn=answered if answered.startswith("arn:") else _key_arn(key),
        der=answer["PublicKey"],
        key_spec=answer.get("KeySpec") or answer.get("CustomerMasterKeySpec", ""),
        key_usage=answer.get("KeyUsage", ""),
    )


def _without_public_key(meta: KeyMetadata) -> PublicKey:
    """The facts of a key that has no public key (HMAC, symmetric), from DescribeKey."""
    return PublicKey(meta.key_id, meta.arn, b"", meta.key_spec, meta.key_usage)


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


def _translate(exc: BaseException, operation: str, key: str | None) -> KmsError:
    """The KmsError for a failed call. Nothing is logged here: the caller says what the failure
    means (the core: one line and a CK_RV, core/kms_errors.py)."""
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
    return KmsError(code, operation, key, request_id, message)


class Backends:
    """One AwsKms per Connection, for as long as its holder keeps this: the initialised module
    keeps one until C_Finalize (its public-key caches go with it); a tool keeps one per run."""

    def __init__(self) -> None:
        self._by_connection: dict[Connection, AwsKms] = {}
        self._lock = threading.Lock()

    def renew_lock(self) -> None:
        """After fork, in the child (see core.module)."""
        self._lock = threading.Lock()
        for backend in self._by_connection.values():
            if backend._cache is not None:
                backend._cache.renew_lock()

    def __call__(self, connection: Connection) -> KmsBackend:
        with self._lock:
            backend = self._by_connection.get(connection)
            if backend is None:
                backend = self._by_connection[connection] = AwsKms(connection)
            return backend


_instances: weakref.WeakSet[AwsKms] = weakref.WeakSet()


def _before_fork() -> None:
    """docs/design.md, "Key cache": a child must not be the first to import the KMS stack."""
    unprepared = [b for b in list(_instances) if b.unprepared()]
    # checked first: a fork with nothing to prepare must not start the OpenSSL probe, nor wait
    if not unprepared or hostsafe.exiting() or not hostsafe.openssl_ready():
        return
    for backend in unprepared:
        backend.prepare_for_children()


# Registered after forking.py's hook (loop imports it first), so it runs before it: that one then
# waits for any import our loop thread still has in flight.
os.register_at_fork(before=_before_fork)

_backends = Backends()  # the tools' (doctor, keys): the module uses its own (core/module.py)
os.register_at_fork(after_in_child=lambda: _backends.renew_lock())


def backend_for(connection: Connection) -> KmsBackend:
    """The one AwsKms for this Connection in this process, for the tools and tests; the module
    uses its Module's Backends, which C_Finalize drops."""
    return _backends(connection)
