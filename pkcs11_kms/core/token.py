"""Tokens: which KMS keys a token holds (named, or found by listing), and its objects."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import KeyRef, TokenConfig
from ..errors import PKCS11Error
from ..kms import KmsError
from ..kms.backend import KeyMetadata, KmsBackend, PublicKey
from .keyspecs import supported
from .kms_errors import failure
from .objects import (
    KmsKey,
    TokenObject,
    certificate_object,
    key_id_bytes,
    key_objects,
    spec_of,
)

if TYPE_CHECKING:
    from asn1crypto import x509

log = logging.getLogger("pkcs11_kms.token")

CERT_CATEGORY_USER, CERT_CATEGORY_AUTHORITY, CERT_CATEGORY_UNSPECIFIED = 1, 2, 0


def alias_label(name: str) -> str:
    """`alias/web` or `arn:...:alias/web` -> `web`."""
    return name.split(":alias/", 1)[-1].removeprefix("alias/")


def is_alias(name: str) -> bool:
    return name.startswith("alias/") or ":alias/" in name


def fit_label(text: str, size: int = 32) -> str:
    """Cut to at most `size` UTF-8 bytes without splitting a character."""
    return text.encode("utf-8")[:size].decode("utf-8", "ignore")


def usable(key_spec: str, key_usage: str, where: str) -> bool:
    """supported(), with one info line when not (for the doctor)."""
    if not supported(key_spec, key_usage):
        log.info("skipping %s: key spec %s / usage %s is not supported", where, key_spec, key_usage)
        return False
    return True


def kms_key(public: PublicKey, label: str) -> KmsKey:
    spec = spec_of(public.key_spec)
    assert spec is not None
    return KmsKey(public.key_id, public.arn, spec, public.key_usage, public.der, label,
                  key_id_bytes(public.key_id))


# Keys left out, and why: where (key as named, or its ARN) -> (log level, reason).
Skipped = dict[str, tuple[int, str]]
_QUIET_REFUSALS = ("DisabledException", "KMSInvalidStateException")  # a state someone chose


def _refused(skipped: Skipped, where: str, error: KmsError) -> None:
    level = logging.INFO if error.code in _QUIET_REFUSALS else logging.WARNING
    skipped[where] = (level, f"KMS {error.operation}: {error.code}")


def _unsupported(skipped: Skipped, where: str, key_spec: str, key_usage: str) -> None:
    skipped[where] = (logging.INFO, f"key spec {key_spec} / usage {key_usage} is not supported")


def log_skipped(skipped: Skipped, before: Skipped | None = None) -> None:
    """One line per key left out, unless it was left out for the same reason before."""
    for where, (level, why) in skipped.items():
        if before is None or before.get(where) != (level, why):
            log.log(level, "skipping %s: %s", where, why)


# Whether this process has read its keys once: later reads (a refresh, C_Initialize again) ask
# KMS; only the first may take the key cache's answers (kms/keycache.py).
_read_once = False


def named_keys(backend: KmsBackend, refs: tuple[KeyRef, ...], skipped: Skipped | None = None
               ) -> list[KmsKey]:
    """Keys named in the config: GetPublicKey only (no List* permission needed), concurrently.
    A key KMS refuses is left out; a device failure raises KmsError."""
    found = []
    left_out: Skipped = {} if skipped is None else skipped
    global _read_once
    answers = backend.public_keys([ref.key for ref in refs], cached=not _read_once)
    _read_once = True
    for ref, answer in zip(refs, answers, strict=True):
        if isinstance(answer, KmsError):
            _refused(left_out, ref.key, answer)
        elif not supported(answer.key_spec, answer.key_usage):
            _unsupported(left_out, ref.key, answer.key_spec, answer.key_usage)
        else:
            label = ref.label or (alias_label(ref.key) if is_alias(ref.key) else answer.key_id)
            found.append(kms_key(answer, label))
    if skipped is None:
        log_skipped(left_out)
    return found


def listed_keys(backend: KmsBackend, config: TokenConfig, skipped: Skipped | None = None
                ) -> list[KmsKey]:
    """Every usable key of the account and region, narrowed by alias prefix and tags: the lists,
    then DescribeKey, ListResourceTags and GetPublicKey of each key concurrently (kms/aws.py).
    A key KMS refuses is left out; a device failure raises KmsError."""
    key_ids, alias_list = backend.inventory()
    aliases: dict[str, list[str]] = {}
    for alias in alias_list:
        if alias.target_key_id:
            aliases.setdefault(alias.target_key_id, []).append(alias.name)
    prefix = config.alias_prefix
    if prefix and not prefix.startswith("alias/"):
        prefix = "alias/" + prefix
    candidates: list[tuple[str, list[str]]] = []
    for key_id in key_ids:
        names = sorted(aliases.get(key_id, []))
        if prefix:
            names = [n for n in names if n.startswith(prefix)]
            if not names:
                continue
        candidates.append((key_id, names))
    wanted_tags = dict(config.tags or {})

    def wanted(meta: KeyMetadata, tags: Mapping[str, str] | None) -> bool:
        if meta.key_state != "Enabled" or not supported(meta.key_spec, meta.key_usage):
            return False
        return tags is None or all(tags.get(k) == v for k, v in wanted_tags.items())

    reads = backend.read_keys([key_id for key_id, _ in candidates], wanted, bool(wanted_tags))
    found = []
    left_out: Skipped = {} if skipped is None else skipped
    for (key_id, names), read in zip(candidates, reads, strict=True):
        meta, public = read.metadata, read.public_key
        if read.error is not None:
            _refused(left_out, key_id, read.error)
        elif meta is not None and meta.key_state != "Enabled":
            left_out[meta.arn] = (logging.INFO, f"state {meta.key_state}")
        elif meta is not None and not supported(meta.key_spec, meta.key_usage):
            _unsupported(left_out, meta.arn, meta.key_spec, meta.key_usage)
        elif public is None:
            continue  # its tags do not match
        elif not supported(public.key_spec, public.key_usage):
            _unsupported(left_out, public.arn or key_id, public.key_spec, public.key_usage)
        else:
            found.append(kms_key(public, alias_label(names[0]) if names else public.key_id))
    if skipped is None:
        log_skipped(left_out)
    return found


def discover(config: TokenConfig, backend: KmsBackend) -> list[KmsKey]:
    if config.keys is not None:
        return named_keys(backend, config.keys)
    return listed_keys(backend, config)


@dataclass(frozen=True)
class Certificate:
    cert: x509.Certificate
    path: str


def read_certificates(paths: tuple[str, ...]) -> list[Certificate]:
    from asn1crypto import pem, x509  # when keys are read (docs/performance.md)

    out = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            log.error("cannot read certificate file %s: %s", path, e.strerror)
            continue
        blocks = [der for _, _, der in pem.unarmor(data, multiple=True)] if pem.detect(data) else [data]
        for der in blocks:
            try:
                cert = x509.Certificate.load(der)
                cert.native  # parse fully now, not when a consumer asks  # noqa: B018
            except ValueError as e:
                log.error("skipping a certificate in %s: not X.509 (%s)", path, e)
                continue
            out.append(Certificate(cert, path))
    return out


class Token:
    """One slot's token. Objects load on first need (a failure is retried on the next call) and
    are read again when older than refresh_interval (docs/design.md, "Key changes")."""

    def __init__(self, slot_id: int, config: TokenConfig, label: str, backend: KmsBackend,
                 refs: tuple[KeyRef, ...] | None = None, keys: list[KmsKey] | None = None):
        self.slot_id = slot_id
        self.config = config
        self.label = fit_label(label)
        self.backend = backend  # the module's, for this token's connection
        # What to read again: the named keys, a listed key by its ARN, or (None) the listing.
        self._refs = refs
        if keys is not None:
            self._refs = tuple(KeyRef(k.arn or k.key_id, k.label) for k in keys)
        self._preloaded = keys  # a listed key's first read was the listing itself
        self._objects: list[TokenObject] | None = None
        self._loaded_at = 0.0  # time.monotonic() of the last read, good or failed
        self._skipped: Skipped = {}
        self._load_lock = threading.Lock()
        identity = repr((config.connection, label, refs, [k.key_id for k in keys or []]))
        self.identity = ("token", identity)
        self.serial = hashlib.sha256(identity.encode()).hexdigest()[:16].upper()
        self.logged_in = False
        # Session objects (copies made by C_CopyObject): handle -> (owning session, object)
        self.session_objects: dict[int, tuple[int, TokenObject]] = {}

    def renew_lock(self) -> None:
        """After fork, in the child: a load another thread had begun will never finish here."""
        self._load_lock = threading.Lock()

    def visible_objects(self) -> list[TokenObject]:
        return self.objects() + [o for _, o in list(self.session_objects.values())]

    def objects(self) -> list[TokenObject]:
        objects = self._objects
        if objects is None:
            with self._load_lock:  # one loader at a time; the module lock is never held here
                objects = self._objects
                if objects is None:
                    objects = self._objects = self._first_read()
                return objects
        if self._stale() and self._load_lock.acquire(blocking=False):
            try:  # one thread re-reads; the others go on with the objects they have meanwhile
                if self._stale():
                    self._refresh()
            finally:
                self._load_lock.release()
        return self._objects or objects  # refreshed, or as they were

    def keys(self) -> list[KmsKey]:
        seen: dict[str, KmsKey] = {}
        for o in self.objects():
            if o.key is not None:
                seen[o.key.key_id] = o.key
        return list(seen.values())

    def _stale(self) -> bool:
        interval = self.config.refresh_interval
        return bool(interval) and time.monotonic() - self._loaded_at >= interval

    def _first_read(self) -> list[TokenObject]:
        try:
            return self._read()
        except KmsError as e:
            raise failure(e) from e  # its one log line: the backend logs nothing

    def _refresh(self) -> None:
        """Keys still there keep their handles; a key gone (deleted, disabled, alias re-pointed)
        takes its objects with it. A failure keeps the objects read before."""
        try:
            self._objects = self._read()
        except Exception as e:  # KMS, or a certificate file replaced by garbage: same answer
            self._loaded_at = time.monotonic()  # try again after another interval
            if isinstance(e, KmsError):
                why = str(e)
            else:
                why = str(e.why or e) if isinstance(e, PKCS11Error) else f"{type(e).__name__}: {e}"
            log.warning("token %r: keeping the keys read before, reading them again failed: %s",
                        self.label, why)

    def _read(self) -> list[TokenObject]:
        skipped: Skipped = {}
        if self._preloaded is not None:
            keys, self._preloaded = self._preloaded, None
        elif self._refs is not None:
            keys = named_keys(self.backend, self._refs, skipped)
        else:
            keys = listed_keys(self.backend, self.config, skipped)
        log_skipped(skipped, self._skipped)
        self._skipped = skipped
        objects = self._build(keys)
        self._loaded_at = time.monotonic()
        return objects

    def _build(self, keys: list[KmsKey]) -> list[TokenObject]:
        from .spki import spki_public_key

        by_key = {spki_public_key(k.spki): k for k in keys if k.spki}  # not HMAC keys
        subjects: dict[str, bytes] = {}
        cert_objects: list[TokenObject] = []
        for c in read_certificates(self.config.certificates):
            key = by_key.get(spki_public_key(c.cert.public_key.dump()))
            if key is not None:
                subjects.setdefault(key.key_id, c.cert.subject.dump())
                label, ckid, category = key.label, key.ckid, CERT_CATEGORY_USER
            else:
                category = CERT_CATEGORY_AUTHORITY if c.cert.ca else CERT_CATEGORY_UNSPECIFIED
                ckid = hashlib.sha1(spki_public_key(c.cert.public_key.dump())).digest()
                label = fit_label(c.cert.subject.native.get("common_name") or "certificate")
            cert_objects.append(certificate_object(self.identity, c.cert, label, ckid, category))
        key_objs = [o for k in keys
                    for o in key_objects(self.identity, k, subjects.get(k.key_id, b""))]
        return key_objs + cert_objects
