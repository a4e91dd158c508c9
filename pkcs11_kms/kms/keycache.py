"""A persistent cache of public key facts, so that a new process lists its keys without asking
KMS (docs/design.md, "Key cache").

What it holds is public: for each key ARN what GetPublicKey says (the SubjectPublicKeyInfo, key
spec and usage, which never change for a key), and for each key named in a config (key id, ARN,
alias) the ARN it led to and when. A key is taken from the cache only when it was named and read
less than `ttl` seconds ago, so an alias re-pointed or a key disabled shows within `ttl` (a host
that keeps running reads again every refresh_interval anyway). KMS refusing a key (not found,
disabled, denied) drops what the cache says of it.

One file per KMS endpoint (region, endpoint URL, profile) in $XDG_CACHE_HOME/pkcs11-kms/
(~/.cache/pkcs11-kms/), created 0600 in a 0700 directory and replaced atomically. A file another
user could change is not read (it could hand out another public key: docs/security.md). A
privileged host (trust.privileged()) uses no cache.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from .. import trust
from .backend import Connection, PublicKey

log = logging.getLogger("pkcs11_kms.kms")

VERSION = 1
DIRECTORY = "pkcs11-kms"


def cache_dir() -> Path:
    env = trust.environ()
    base = env.get("XDG_CACHE_HOME") or os.path.join(trust.home(env), ".cache")
    return Path(base) / DIRECTORY


def for_connection(connection: Connection) -> KeyCache | None:
    """The cache of `connection`'s endpoint, or None when it is off (config, privileged host)."""
    if not connection.key_cache or trust.privileged():
        return None
    identity = "\0".join(str(v) for v in (connection.region, connection.endpoint_url,
                                          connection.profile))
    name = "keys-" + hashlib.sha256(identity.encode()).hexdigest()[:16] + ".json"
    return KeyCache(cache_dir() / name, connection.key_cache_ttl)


class KeyCache:
    def __init__(self, path: Path, ttl: float) -> None:
        self.path = path
        self.ttl = ttl
        self._lock = threading.Lock()
        self._keys: dict[str, dict[str, str]] | None = None  # ARN -> public facts
        self._refs: dict[str, dict[str, Any]] = {}  # key as named -> {"arn", "at"}

    def renew_lock(self) -> None:
        """After fork, in the child."""
        self._lock = threading.Lock()

    # -- reading --

    def lookup(self, ref: str) -> PublicKey | None:
        """What `ref` led to less than ttl seconds ago, or None."""
        with self._lock:
            self._load()
            entry = self._refs.get(ref)
            if entry is None or not 0 <= time.time() - float(entry.get("at", 0)) < self.ttl:
                return None
            return self._public(str(entry.get("arn", "")))

    def by_arn(self, arn: str) -> PublicKey | None:
        """A key's public facts, which never change: no ttl."""
        with self._lock:
            self._load()
            return self._public(arn)

    # -- writing --

    def remember(self, answers: list[tuple[str | None, PublicKey]]) -> None:
        """Records each (key as named or None, its public facts) and writes the file once."""
        if not answers:
            return
        with self._lock:
            self._load()
            assert self._keys is not None
            now = time.time()
            for ref, public in answers:
                if not public.arn:
                    continue
                self._keys[public.arn] = {
                    "key_id": public.key_id, "der": base64.b64encode(public.der).decode(),
                    "key_spec": public.key_spec, "key_usage": public.key_usage}
                if ref is not None:
                    self._refs[ref] = {"arn": public.arn, "at": now}
            self._write()

    def forget(self, key: str) -> None:
        """KMS refused `key` (as named, or its ARN): nothing cached leads to it any more."""
        with self._lock:
            self._load()
            assert self._keys is not None
            arns = {key} | {str(e.get("arn")) for r, e in self._refs.items() if r == key}
            gone = [r for r, e in self._refs.items() if r == key or e.get("arn") in arns]
            if not gone and not arns & set(self._keys):
                return
            for r in gone:
                del self._refs[r]
            for arn in arns:
                self._keys.pop(arn, None)
            self._write()

    # -- the file --

    def _public(self, arn: str) -> PublicKey | None:
        assert self._keys is not None
        facts = self._keys.get(arn)
        if facts is None:
            return None
        try:
            return PublicKey(facts["key_id"], arn, base64.b64decode(facts["der"]),
                             facts["key_spec"], facts["key_usage"])
        except (KeyError, ValueError, TypeError):
            return None

    def _load(self) -> None:
        if self._keys is not None:
            return
        self._keys, self._refs = {}, {}
        try:
            trust.check_file(str(self.path))
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except trust.Untrusted as e:
            log.warning("key cache not used: %s", e)
            return
        except (OSError, ValueError) as e:
            log.info("key cache %s not read: %s", self.path, type(e).__name__)
            return
        if isinstance(data, dict) and data.get("version") == VERSION:
            keys, refs = data.get("keys"), data.get("refs")
            self._keys = keys if isinstance(keys, dict) else {}
            self._refs = refs if isinstance(refs, dict) else {}

    def _write(self) -> None:
        """Atomically: a temporary file in the same directory, 0600, then rename."""
        import tempfile  # here: importing the backend stays light

        data = json.dumps({"version": VERSION, "keys": self._keys, "refs": self._refs})
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            trust.check_file(str(self.path.parent))
            fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".keys-")
            try:
                with os.fdopen(fd, "w") as out:  # mkstemp: mode 0600
                    out.write(data)
                os.replace(temporary, self.path)
            except BaseException:
                os.unlink(temporary)
                raise
        except (OSError, trust.Untrusted) as e:
            log.info("key cache %s not written: %s", self.path, e)
