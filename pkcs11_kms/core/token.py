"""Tokens: which KMS keys a token holds (named, or found by listing), and its objects."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass

from asn1crypto import keys as asn1keys
from asn1crypto import pem, x509

from ..config import KeyRef, TokenConfig
from ..errors import PKCS11Error
from ..kms import KmsError, backend_for
from ..kms.backend import KmsBackend, PublicKey
from .keyspecs import KEY_USAGES
from .objects import KmsKey, TokenObject, certificate_object, key_id_bytes, key_objects, spec_of

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
    """Keys the token can expose; the others are skipped with one info line each."""
    if spec_of(key_spec) is None or key_usage not in KEY_USAGES:
        log.info("skipping %s: key spec %s / usage %s is not supported", where, key_spec, key_usage)
        return False
    return True


def kms_key(public: PublicKey, label: str) -> KmsKey:
    spec = spec_of(public.key_spec)
    assert spec is not None
    return KmsKey(public.key_id, public.arn, spec, public.key_usage, public.der, label,
                  key_id_bytes(public.key_id))


def named_keys(backend: KmsBackend, refs: tuple[KeyRef, ...]) -> list[KmsKey]:
    """Keys named in the config: GetPublicKey only (no List* permission needed)."""
    found = []
    for ref in refs:
        try:
            public = backend.get_public_key(ref.key)
        except KmsError as e:
            if e.code in ("DisabledException", "KMSInvalidStateException", "NotFoundException"):
                level = logging.WARNING if e.code == "NotFoundException" else logging.INFO
                log.log(level, "skipping %s: %s", ref.key, e.code)
                continue
            raise
        if not usable(public.key_spec, public.key_usage, ref.key):
            continue
        label = ref.label or (alias_label(ref.key) if is_alias(ref.key) else public.key_id)
        found.append(kms_key(public, label))
    return found


def listed_keys(backend: KmsBackend, config: TokenConfig) -> list[KmsKey]:
    """Every usable key of the account and region, narrowed by alias prefix and tags."""
    aliases: dict[str, list[str]] = {}
    for alias in backend.list_aliases():
        if alias.target_key_id:
            aliases.setdefault(alias.target_key_id, []).append(alias.name)
    prefix = config.alias_prefix
    if prefix and not prefix.startswith("alias/"):
        prefix = "alias/" + prefix
    wanted_tags = dict(config.tags or {})
    found = []
    for key_id in backend.list_keys():
        names = sorted(aliases.get(key_id, []))
        if prefix:
            names = [n for n in names if n.startswith(prefix)]
            if not names:
                continue
        meta = backend.describe_key(key_id)
        if meta.key_state != "Enabled":
            log.info("skipping %s: state %s", meta.arn, meta.key_state)
            continue
        if not usable(meta.key_spec, meta.key_usage, meta.arn):
            continue
        if wanted_tags:
            tags = backend.list_resource_tags(key_id)
            if any(tags.get(k) != v for k, v in wanted_tags.items()):
                continue
        public = backend.get_public_key(meta.arn)
        if usable(public.key_spec, public.key_usage, meta.arn):
            label = alias_label(names[0]) if names else public.key_id
            found.append(kms_key(public, label))
    return found


def discover(config: TokenConfig) -> list[KmsKey]:
    backend = backend_for(config.connection)
    if config.keys is not None:
        return named_keys(backend, config.keys)
    return listed_keys(backend, config)


@dataclass(frozen=True)
class Certificate:
    cert: x509.Certificate
    path: str


def read_certificates(paths: tuple[str, ...]) -> list[Certificate]:
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


def _spki_key(der: bytes) -> bytes:
    """A comparable form of a public key, whatever the encoder's choices."""
    return asn1keys.PublicKeyInfo.load(der)["public_key"].dump()


class Token:
    """One slot's token. Objects load on first need; a failure is retried on the next call."""

    def __init__(self, slot_id: int, config: TokenConfig, label: str,
                 refs: tuple[KeyRef, ...] | None = None, keys: list[KmsKey] | None = None):
        self.slot_id = slot_id
        self.config = config
        self.label = fit_label(label)
        self._refs = refs
        self._preloaded = keys
        self._objects: list[TokenObject] | None = None
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
        if self._objects is None:
            with self._load_lock:  # one loader at a time; the module lock is never held here
                if self._objects is None:
                    self._objects = self._load()
        return self._objects

    def keys(self) -> list[KmsKey]:
        seen: dict[str, KmsKey] = {}
        for o in self.objects():
            if o.key is not None:
                seen[o.key.key_id] = o.key
        return list(seen.values())

    def _load(self) -> list[TokenObject]:
        try:
            if self._preloaded is not None:
                keys = self._preloaded
            elif self._refs is not None:
                keys = named_keys(backend_for(self.config.connection), self._refs)
            else:
                keys = discover(self.config)
        except KmsError as e:
            raise PKCS11Error(e.rv, str(e)) from e
        by_key = {_spki_key(k.spki): k for k in keys}
        subjects: dict[str, bytes] = {}
        cert_objects: list[TokenObject] = []
        for c in read_certificates(self.config.certificates):
            key = by_key.get(_spki_key(c.cert.public_key.dump()))
            if key is not None:
                subjects.setdefault(key.key_id, c.cert.subject.dump())
                label, ckid, category = key.label, key.ckid, CERT_CATEGORY_USER
            else:
                category = CERT_CATEGORY_AUTHORITY if c.cert.ca else CERT_CATEGORY_UNSPECIFIED
                ckid = hashlib.sha1(bytes(c.cert.public_key["public_key"])).digest()
                label = fit_label(c.cert.subject.native.get("common_name") or "certificate")
            cert_objects.append(certificate_object(self.identity, c.cert, label, ckid, category))
        key_objs = [o for k in keys for o in key_objects(self.identity, k, subjects.get(k.key_id, b""))]
        return key_objs + cert_objects
