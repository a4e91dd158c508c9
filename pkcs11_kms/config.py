"""Configuration: the TOML file saying which KMS keys form which tokens, and how to reach KMS."""

from __future__ import annotations

import difflib
import ipaddress
import logging
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn
from urllib.parse import urlsplit

from . import trust
from .errors import ConfigError

log = logging.getLogger(__name__)

ENV_VAR = "PKCS11_KMS_CONFIG"
USER_CONFIG = "pkcs11-kms/config.toml"  # under $XDG_CONFIG_HOME, by default ~/.config
SYSTEM_CONFIG = "/etc/pkcs11-kms/config.toml"
LABEL_BYTES = 32  # CK_TOKEN_INFO.label
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Connection:
    """Where and how to reach KMS; None means the standard AWS chain decides (env, profile...)."""

    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    ca_bundle: str | None = None  # PEM bundle to trust for HTTPS to the endpoint
    connect_timeout: float = 5.0  # seconds
    read_timeout: float = 15.0  # seconds
    max_attempts: int = 3  # botocore retry attempts, first try included
    retry_mode: str = "standard"  # botocore retry mode: standard | adaptive | legacy
    # http:// to a host that is not loopback (docs/security.md, "Transport")
    allow_insecure_http: bool = False
    # The key cache (kms/keycache.py): on, and how long a named key's cached answer is used
    key_cache: bool = True  # docs/design.md, "Key cache"
    key_cache_ttl: float = 300.0  # seconds


@dataclass(frozen=True)
class KeyRef:
    """One key named in `keys`: a key id, key ARN, alias name or alias ARN, and its CKA_LABEL."""

    key: str
    label: str | None = None  # None: the core derives one (alias name or key id)


@dataclass(frozen=True)
class TokenConfig:
    """One [[token]] table, top-level defaults applied: which keys, and how to reach them."""

    label: str | None = None  # None: the core's default label
    keys: tuple[KeyRef, ...] | None = None  # None: every usable key that matches the filters
    alias_prefix: str | None = None
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    token_per_key: bool = False
    certificates: tuple[str, ...] = ()  # absolute paths of PEM files
    connection: Connection = field(default_factory=Connection)
    public_key_operations: str = "local"  # local | kms
    refresh_interval: float = 300.0  # seconds before the keys are read again; 0: never


@dataclass(frozen=True)
class Config:
    """The whole configuration; Config() is what no config file means."""

    path: str | None = None
    tokens: tuple[TokenConfig, ...] = (TokenConfig(),)
    log_level: str = "warning"
    log_file: str | None = None


class _Bad(Exception):
    """A value is wrong; the message says how, and callers prefix where."""


def _fail(message: str) -> NoReturn:
    raise _Bad(message)


# --- value checks: (value, directory of the config file) -> the value to store --------------------


def _path(value: str, base: Path) -> str:
    """A path relative to the config file's directory (nginx workers run elsewhere)."""
    if not value:
        _fail("must not be empty")
    return str(base / trust.expand(value))


def _untrusted(problem: str) -> NoReturn:
    _fail(f"refused: {problem} (docs/security.md, \"Files\")")


def _readable_file(value: str, base: Path) -> str:
    """A file to read (certificates, ca_bundle) that no other user can change."""
    path = _path(value, base)
    try:
        with open(path, "rb") as f:
            trust.check_stat(os.fstat(f.fileno()), path)
        trust.check_file(path)
    except OSError as e:
        _fail(f"cannot read {path}: {e.strerror or e}")
    except trust.Untrusted as e:
        _untrusted(str(e))
    return path


def _log_file(value: str, base: Path) -> str:
    """The log file: no other user may change it or where it is; never a symbolic link."""
    path = _path(value, base)
    try:
        trust.check_file(path, symlink=False, missing_ok=True)
    except OSError:
        pass  # logs.configure says why it cannot be opened, and logs to stderr
    except trust.Untrusted as e:
        _untrusted(str(e))
    return path


def _nonempty(value: str, base: Path) -> str:
    return value if value.strip() else _fail("must not be empty")


def _region(value: str, base: Path) -> str:
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", value):
        _fail(f"{value!r} is not a region name like 'eu-west-1'")
    return value


def _url(value: str, base: Path) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        _fail(f"{value!r} is not a URL: {e}")
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", value):
        _fail(f"{value!r} is not an http:// or https:// URL")
    return value


def loopback(host: str | None) -> bool:
    """Whether a URL's host is this machine: localhost, 127.0.0.0/8 or ::1."""
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def insecure_http(url: str | None) -> bool:
    """Plain http:// to a host that is not loopback: requests and answers readable on the way."""
    if not url:
        return False
    parts = urlsplit(url)
    return parts.scheme.lower() == "http" and not loopback(parts.hostname)


def _positive(value: float, base: Path) -> float:
    if not (math.isfinite(value) and value > 0):
        _fail(f"must be a number of seconds > 0, not {value!r}")
    return float(value)


def _interval(value: float, base: Path) -> float:
    if not (math.isfinite(value) and value >= 0):
        _fail(f"must be a number of seconds >= 0 (0: never), not {value!r}")
    return float(value)


def _at_least_one(value: int, base: Path) -> int:
    return value if value >= 1 else _fail(f"must be >= 1, not {value!r}")


def _one_of(*choices: str) -> Callable[[str, Path], str]:
    def check(value: str, base: Path) -> str:
        if value.lower() not in choices:
            _fail(f"{value!r} is not one of {', '.join(choices)}")
        return value.lower()

    return check


def _label(value: str, base: Path) -> str:
    if not value.strip():
        _fail("must not be empty")
    if len(value.encode()) > LABEL_BYTES:
        _fail(f"{value!r} is longer than {LABEL_BYTES} bytes (UTF-8)")
    return value


_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# KMS writes multi-Region ids as mrk- and 32 hex digits; emulators (moto) as mrk- and a UUID.
_KEY_ID = rf"(?:{_UUID}|mrk-[0-9a-f]{{32}}|mrk-{_UUID})"
_ALIAS = r"alias/[A-Za-z0-9/_-]+"
_ARN = r"arn:aws[a-z-]*:kms:(?P<region>[a-z0-9-]+):\d{12}:"
_KEY = re.compile(rf"{_KEY_ID}|{_ALIAS}|{_ARN}(?:key/{_KEY_ID}|{_ALIAS})")
_KEY_FORMS = "a key id, mrk- id, key ARN, alias name (alias/...) or alias ARN"


def _key_ref(item: Any, base: Path) -> KeyRef:
    if type(item) is dict:
        _known(item, {"key", "label"}, "key table")
        if "key" not in item:
            _fail("a key table needs key = '...'")
        key, label = item["key"], item.get("label")
        if type(key) is not str or (label is not None and type(label) is not str):
            _fail("key and label in a key table must be strings")
        if label is not None:
            _nonempty(label, base)
    elif type(item) is str:
        key, label = item, None
    else:
        _fail(f"must be a string or a {{ key = ..., label = ... }} table, not {_toml_type(item)}")
    if not _KEY.fullmatch(key):
        _fail(f"{key!r} is not {_KEY_FORMS}")
    return KeyRef(key, label)


def _keys(value: list[Any], base: Path) -> tuple[KeyRef, ...]:
    if not value:
        _fail("is empty (omit it to select every usable key)")
    refs = tuple(_at(f"[{i}]", _key_ref, item, base) for i, item in enumerate(value))
    for i, ref in enumerate(refs):
        if ref.key in (r.key for r in refs[:i]):
            _fail(f"[{i}]: {ref.key!r} is listed twice")
    return refs


def _alias_prefix(value: str, base: Path) -> str:
    return value if value.startswith("alias/") else _fail("must start with 'alias/'")


def _tags(value: dict[str, Any], base: Path) -> Mapping[str, str]:
    for name, tag in value.items():
        if type(tag) is not str:
            _fail(f"{name}: must be a string, not {_toml_type(tag)}")
    return MappingProxyType(dict(value))


def _certificates(value: list[Any], base: Path) -> tuple[str, ...]:
    def one(item: Any, base: Path) -> str:
        return _readable_file(item, base) if type(item) is str else _fail("must be a path string")

    return tuple(_at(f"[{i}]", one, item, base) for i, item in enumerate(value))


def _as_is(value: Any, base: Path) -> Any:
    return value


# --- the table: every key the file may hold ------------------------------------------------------

TOP, TOKEN, BOTH = frozenset({"top"}), frozenset({"token"}), frozenset({"top", "token"})


@dataclass(frozen=True)
class _Setting:
    types: tuple[type, ...]
    default: Any
    scope: frozenset[str]  # top level (a default for every token), [[token]], or both
    check: Callable[[Any, Path], Any] = _as_is


_C = Connection()
_SETTINGS: dict[str, _Setting] = {
    "region": _Setting((str,), _C.region, BOTH, _region),
    "profile": _Setting((str,), _C.profile, BOTH, _nonempty),
    "endpoint_url": _Setting((str,), _C.endpoint_url, BOTH, _url),
    "ca_bundle": _Setting((str,), _C.ca_bundle, BOTH, _readable_file),
    "allow_insecure_http": _Setting((bool,), _C.allow_insecure_http, BOTH),
    "key_cache": _Setting((bool,), _C.key_cache, BOTH),
    "key_cache_ttl": _Setting((int, float), _C.key_cache_ttl, BOTH, _interval),
    "connect_timeout": _Setting((int, float), _C.connect_timeout, BOTH, _positive),
    "read_timeout": _Setting((int, float), _C.read_timeout, BOTH, _positive),
    "max_attempts": _Setting((int,), _C.max_attempts, BOTH, _at_least_one),
    "retry_mode": _Setting((str,), _C.retry_mode, BOTH, _one_of("standard", "adaptive", "legacy")),
    "public_key_operations": _Setting((str,), "local", BOTH, _one_of("local", "kms")),
    "refresh_interval": _Setting((int, float), TokenConfig.refresh_interval, BOTH, _interval),
    "log_level": _Setting((str,), "warning", TOP, _one_of(*LOG_LEVELS)),
    "log_file": _Setting((str,), None, TOP, _log_file),
    "label": _Setting((str,), None, TOKEN, _label),
    "keys": _Setting((list,), None, TOKEN, _keys),
    "alias_prefix": _Setting((str,), None, TOKEN, _alias_prefix),
    "tags": _Setting((dict,), MappingProxyType({}), TOKEN, _tags),
    "token_per_key": _Setting((bool,), False, TOKEN),
    "certificates": _Setting((list,), (), TOKEN, _certificates),
}
_CONNECTION = tuple(f.name for f in fields(Connection))
_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "an array",
    dict: "a table",
}


def _toml_type(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), "a date/time")


def _at(where: str, check: Callable[[Any, Path], Any], value: Any, base: Path) -> Any:
    """check(value), with `where` prefixed to any complaint."""
    try:
        return check(value, base)
    except _Bad as e:
        raise _Bad(f"{where}: {e}") from None


def _known(table: Mapping[str, Any], allowed: Any, what: str) -> None:
    for name in table:
        if name not in allowed:
            close = difflib.get_close_matches(name, list(allowed), 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            _fail(f"unknown key {name!r} in {what}{hint}")


def _read_table(table: Mapping[str, Any], scope: str) -> dict[str, Any]:
    """Type-check a table against _SETTINGS; checks run later, on the merged values."""
    allowed = [name for name, s in _SETTINGS.items() if scope in s.scope]
    for name in table:
        if name in _SETTINGS and name not in allowed:
            other = "a [[token]] table" if scope == "top" else "the top level"
            _fail(f"{name!r} belongs in {other}")
    _known(table, allowed, "the top level" if scope == "top" else "[[token]]")
    for name, value in table.items():
        if type(value) not in _SETTINGS[name].types:
            types = " or ".join(_TYPE_NAMES[t] for t in _SETTINGS[name].types)
            _fail(f"{name}: must be {types}, not {_toml_type(value)}")
    return dict(table)


def _checked(raw: Mapping[str, Any], base: Path) -> dict[str, Any]:
    return {name: _at(name, _SETTINGS[name].check, value, base) for name, value in raw.items()}


def _token(table: Mapping[str, Any], defaults: Mapping[str, Any], base: Path) -> TokenConfig:
    v = {**defaults, **_checked(_read_table(table, "token"), base)}
    if v["keys"] is not None and ("alias_prefix" in table or "tags" in table):
        _fail(
            "keys names the keys itself, alias_prefix and tags filter listed keys: "
            "use one or the other"
        )
    if v["token_per_key"] and v["label"] is not None:
        _fail("label: with token_per_key = true each token takes its key's label")
    if insecure_http(v["endpoint_url"]) and not v["allow_insecure_http"]:
        _fail(
            f"endpoint_url: {v['endpoint_url']!r} is plain http:// to a host that is not "
            "loopback: requests, answers and the session token would cross the network "
            "unencrypted; use https://, or set allow_insecure_http = true if you must"
        )
    for i, ref in enumerate(v["keys"] or ()):
        if v["token_per_key"] and ref.label is not None:
            _at(f"keys[{i}]: label", _label, ref.label, base)
        arn = _KEY.fullmatch(ref.key)
        if arn and arn["region"] and v["region"] and arn["region"] != v["region"]:
            _fail(f"keys[{i}]: {ref.key!r} is in {arn['region']}, the token uses {v['region']}")
    return TokenConfig(
        label=v["label"],
        keys=v["keys"],
        alias_prefix=v["alias_prefix"],
        tags=v["tags"],
        token_per_key=v["token_per_key"],
        certificates=v["certificates"],
        connection=Connection(**{name: v[name] for name in _CONNECTION}),
        public_key_operations=v["public_key_operations"],
        refresh_interval=v["refresh_interval"],
    )


def _check_labels(tokens: tuple[TokenConfig, ...]) -> None:
    seen: dict[str | None, int] = {}
    labels: list[str | None]
    for n, token in enumerate(tokens, 1):
        if token.token_per_key:
            labels = [ref.label for ref in token.keys or () if ref.label is not None]
        else:
            labels = [token.label]
        for label in labels:
            if label in seen and label is None:
                _fail(f"[[token]] #{seen[label]} and #{n} both have no label: give each a label")
            if label in seen:
                _fail(f"label {label!r} is used twice ([[token]] #{seen[label]} and #{n})")
            seen[label] = n


def _build(document: dict[str, Any], base: Path, path: str) -> Config:
    top = dict(document)
    tables = top.pop("token", [{}])
    if type(tables) is not list or not all(type(t) is dict for t in tables):
        _fail("token must be an array of tables: write [[token]], not [token]")
    if not tables:
        _fail("token = [] defines no token (omit it for one token with every usable key)")
    defaults = {name: s.default for name, s in _SETTINGS.items()}
    defaults.update(_checked(_read_table(top, "top"), base))
    tokens = []
    for n, table in enumerate(tables, 1):
        label = table.get("label")
        where = f"[[token]] #{n}" + (f" {label!r}" if type(label) is str else "")
        try:
            tokens.append(_token(table, defaults, base))
        except _Bad as e:
            raise _Bad(f"{where}: {e}") from None
    _check_labels(tuple(tokens))
    return Config(path, tuple(tokens), defaults["log_level"], defaults["log_file"])


# --- finding and reading the file ----------------------------------------------------------------


def _looks_like_path(reserved: str) -> bool:
    return reserved.startswith(("/", "./", "../", "~")) or reserved.endswith(".toml")


def find_config(
    reserved: str | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The config file to use, in lookup order; None when there is none. ConfigError when a path
    named explicitly (pReserved, $PKCS11_KMS_CONFIG) does not exist. In a privileged process
    (setuid, setgid, capabilities) the environment names no file and the user's config is not
    read: pReserved (the program's own choice) or the system-wide file (docs/security.md)."""
    env = trust.environ(environ)
    privileged = trust.privileged()

    def expand(p: str) -> str:
        return trust.expand(p, env)

    if reserved:
        if os.path.isfile(expand(reserved)) or _looks_like_path(reserved):
            return _explicit(expand(reserved), "C_Initialize pReserved")
        log.debug("ignoring C_Initialize pReserved %r: not a config file path", reserved)
    if env.get(ENV_VAR):
        return _explicit(expand(env[ENV_VAR]), f"${ENV_VAR}")
    candidates = [SYSTEM_CONFIG]
    if not privileged:
        xdg = env.get("XDG_CONFIG_HOME", "")
        config_home = xdg if os.path.isabs(xdg) else os.path.join(trust.home(env), ".config")
        candidates.insert(0, os.path.join(config_home, USER_CONFIG))
    for candidate in candidates:
        if os.path.lexists(candidate):
            return os.path.abspath(candidate)
    return None


def _explicit(path: str, source: str) -> str:
    if not os.path.lexists(path):
        raise ConfigError(path, f"no such file (named by {source})")
    return os.path.abspath(path)


def load_config(reserved: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Find, read and validate the configuration (C_Initialize). Raises ConfigError, whose
    message names the file and the problem in one line. A file another user could change is
    refused (docs/security.md, "Files")."""
    path = find_config(reserved, environ)
    if path is None:
        log.debug("no config file: one token with every usable key, AWS default settings")
        return Config()
    log.debug("config file %s", path)
    try:
        with open(path, "rb") as f:
            trust.check_stat(os.fstat(f.fileno()), path)
            trust.check_file(path)
            document = tomllib.loads(f.read().decode("utf-8"))
        config = _build(document, Path(path).parent, path)
    except OSError as e:
        raise ConfigError(path, f"cannot read: {e.strerror or e}") from None
    except trust.Untrusted as e:
        raise ConfigError(path, f"refused: {e} (docs/security.md, \"Files\")") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, f"TOML syntax error: {e}") from None
    except _Bad as e:
        raise ConfigError(path, str(e)) from None
    for n, token in enumerate(config.tokens, 1):
        if token.connection.allow_insecure_http and insecure_http(token.connection.endpoint_url):
            from . import logs

            logs.warn_at_start(
                f"config {path}: [[token]] #{n}: allow_insecure_http: KMS requests and answers "
                f"to {token.connection.endpoint_url} cross the network unencrypted")
    return config
