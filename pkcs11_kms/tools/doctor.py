"""`pkcs11-kms doctor`: can the module work here? Installation, config, credentials, region,
endpoint, keys."""

from __future__ import annotations

import ast
import os
import re
import socket
import ssl
import stat
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

from ..config import Config, TokenConfig
from ..kms.aws import named_region
from ..kms.backend import Connection, PublicKey
from ..kms.specs import (
    ENCRYPT_DECRYPT,
    GENERATE_VERIFY_MAC,
    KEY_AGREEMENT,
    KEY_SPECS,
    RSAES_OAEP,
    algorithm_name,
)

OK, BAD, NOTE = "✓", "✗", "·"

# KMS error code -> what to do about it (the {key} and {op} placeholders are filled in).
_FIXES = {
    "NotFoundException": "no such key or alias in this account and region: check the name, "
    "the region and the account the credentials belong to",
    "DisabledException": "the key is disabled: enable it (aws kms enable-key --key-id {key}) or "
    "remove it from the config",
    "KMSInvalidStateException": "the key is pending deletion or import: cancel the deletion "
    "(aws kms cancel-key-deletion --key-id {key}) or remove it from the config",
    "AccessDeniedException": "this identity may not call kms:{op} on {key}: allow it in the IAM "
    "policy or the key policy",
    "InvalidKeyUsageException": "KMS refuses {op} with this key's usage or spec",
    "UnrecognizedClientException": "KMS does not know the access key id: the credentials belong "
    "to no account here (wrong profile or endpoint?)",
    "InvalidSignatureException": "KMS refused the request signature: wrong secret key, or the "
    "clock is off",
    "ExpiredTokenException": "the session credentials expired: renew them (aws sso login, or a "
    "fresh role session)",
    "NoCredentials": "no usable AWS credentials",
    "NetworkError": "cannot connect to the KMS endpoint",
    "TlsError": "TLS to the endpoint failed: check ca_bundle",
    "Timeout": "KMS did not answer in time",
}
_CREDENTIAL_SOURCES = {
    "env": "environment variables",
    "shared-credentials-file": "~/.aws/credentials",
    "config-file": "~/.aws/config",
    "custom-process": "credential_process of the profile",
    "assume-role": "assume-role profile",
    "assume-role-with-web-identity": "web identity token",
    "sso": "IAM Identity Center (SSO) profile",
    "container-role": "container role",
    "iam-role": "EC2 instance role",
}


@dataclass
class Report:
    """The lines printed so far and how many of them are problems."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    problems: int = 0

    def ok(self, text: str) -> None:
        print(f"{OK} {text}", file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(f"{NOTE} {text}", file=self.out, flush=True)

    def bad(self, text: str, fix: str | None = None) -> None:
        self.problems += 1
        print(f"{BAD} {text}", file=self.out, flush=True)
        if fix:
            print(f"  → fix: {fix}", file=self.out, flush=True)

    def heading(self, text: str) -> None:
        print(f"\n{text}", file=self.out, flush=True)


def _fix_for(code: str, key: str, op: str, default: str = "") -> str:
    return _FIXES.get(code, default or f"KMS answered {code}").format(key=key, op=op)


# --- the installation ------------------------------------------------------------------------

_INSTALL_FIX = ("every program that loads the library runs this code: install pkcs11-kms as root "
                "(README, \"Install\"), so that only root can change it (docs/security.md, "
                "\"The installation\")")
_SITE_DIRS = re.compile(rb"PROBLEM = run\(LIBRARY, (\[[^\]\n]*\])\)")


def library_site_dirs(library: str) -> list[str]:
    """The site directories the library imports from: build_ffi.py embeds them in it
    (python_host_source); this Python's own when they cannot be read from it."""
    import site

    try:
        with open(library, "rb") as f:
            found = _SITE_DIRS.search(f.read())
        if found:
            dirs = ast.literal_eval(found.group(1).decode())
            if isinstance(dirs, list) and all(isinstance(d, str) for d in dirs):
                return dirs
    except (OSError, ValueError, SyntaxError):
        pass
    return list(site.getsitepackages())


def _tree(top: str, skip: set[str]) -> Iterator[str]:
    """Every entry under `top` but those in `skip` (symbolic links not followed)."""
    for directory, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(directory, d) not in skip]
        for name in (*dirs, *files):
            if os.path.join(directory, name) not in skip:
                yield os.path.join(directory, name)


def _changeable(path: str, walk: bool, skip: set[str]) -> tuple[str | None, int]:
    """The first reason another user could change `path` (or, `walk`, anything under it but
    `skip`), and how many entries have one."""
    from ..trust import Untrusted, check_file, check_stat

    first: str | None = None
    count = 0

    def found(reason: str) -> None:
        nonlocal first, count
        first, count = first or reason, count + 1

    try:
        check_file(path)  # the directories from / down, links followed, and path itself
    except Untrusted as e:
        found(str(e))
    except OSError:
        return None, 0  # not there: nothing to change
    if walk and os.path.isdir(path):
        for entry in _tree(path, skip):
            try:
                st = os.lstat(entry)
                if stat.S_ISLNK(st.st_mode):
                    check_file(entry)  # where it leads
                else:
                    check_stat(st, entry)
            except Untrusted as e:
                found(str(e))
            except OSError:
                pass  # gone meanwhile, or a dangling link
    return first, count


def installation_parts(library: str) -> list[tuple[str, str, bool]]:
    """(what, path, walk its tree) of what the library runs: itself, its package, and the
    Python environment it starts (interpreter, libpython, standard library, site directories;
    a virtual environment whole)."""
    package = os.path.dirname(library)
    python = [sys.executable, sysconfig.get_paths()["stdlib"]]
    libpython = sysconfig.get_config_var("LDLIBRARY")
    if libpython:
        python.append(os.path.join(sysconfig.get_config_var("LIBDIR") or "", libpython))
    trees = library_site_dirs(library)
    if sys.prefix != sys.base_prefix:
        trees.insert(0, sys.prefix)  # the venv: pyvenv.cfg, bin/, its site-packages
    parts = [("library", library, False), ("package", package, True)]
    parts += [("Python environment", p, False) for p in python[:1]]
    parts += [("Python environment", p, True) for p in python[1:] + trees]
    seen: list[str] = []
    kept = []
    for what, path, walk in parts:
        inside = any(path == s or path.startswith(s.rstrip("/") + "/") for s in seen)
        if walk and inside:
            continue
        if walk:
            seen.append(path)
        kept.append((what, path, walk))
    return kept


def check_installation(report: Report, library: str | None = None) -> bool:
    """Can a user other than root (or the one running doctor) change what the library runs?"""
    from .. import module_path
    from ..trust import _who

    library = library or str(module_path())
    problems: dict[str, tuple[str, int]] = {}
    checked: set[str] = set()  # each entry counts once, in the first part it belongs to
    for what, path, walk in installation_parts(library):
        reason, count = _changeable(path, walk, checked)
        checked.add(path)
        if reason is None:
            continue
        first, total = problems.get(what, (reason, 0))
        problems[what] = (first, total + count)
    for what, (reason, count) in problems.items():
        more = f" (and {count - 1} more)" if count > 1 else ""
        report.bad(f"installation: {what}: {reason}{more}", _INSTALL_FIX)
    if not problems:
        report.ok(f"installation: {library}, its package and its Python environment "
                  f"({sys.prefix}) can be changed only by {_who()}")
    return not problems


# --- config ---------------------------------------------------------------------------------------


def check_config(path: str | None, report: Report) -> Config | None:
    from ..config import find_config, load_config
    from ..errors import ConfigError

    try:
        if path is not None:
            if not os.path.isfile(os.path.expanduser(path)):
                raise ConfigError(path, "no such file (named by --config)")
            path = os.path.abspath(os.path.expanduser(path))
        found = path or find_config()
        config = load_config(path)
    except ConfigError as e:
        report.bad(f"config: {e.why}", "edit the file: the module refuses to start with it "
                   "(C_Initialize returns CKR_FUNCTION_FAILED)")
        return None
    if found is None:
        report.ok("config: no file found ($PKCS11_KMS_CONFIG, ~/.config/pkcs11-kms/config.toml, "
                  "/etc/pkcs11-kms/config.toml): one token with every usable key, AWS defaults")
    else:
        count = len(config.tokens)
        report.ok(f"config: {found} ({count} [[token]] table{'s' if count != 1 else ''})")
    return config


# --- the connection: region, credentials, endpoint ------------------------------------------------


def _session(connection: Connection) -> Any:
    import botocore.session

    return botocore.session.Session(profile=connection.profile)


def check_region(connection: Connection, report: Report) -> str | None:
    from botocore.exceptions import ProfileNotFound

    named = named_region(connection)
    if named:
        report.ok(f"region: {named[0]} ({named[1]})")
        return named[0]
    try:
        region = _session(connection).get_config_variable("region")
    except ProfileNotFound as e:
        report.bad(f"region: {e}", "check the profile name (config `profile`, AWS_PROFILE) "
                   "and ~/.aws/config")
        return None
    if not region:
        report.bad("region: none configured", "set region in the config file, or AWS_REGION, "
                   "or region in the AWS profile")
        return None
    source = "AWS_DEFAULT_REGION" if os.environ.get("AWS_DEFAULT_REGION") == region else "profile"
    report.ok(f"region: {region} ({source})")
    return str(region)


def check_credentials(connection: Connection, report: Report) -> bool:
    """Found or not, and where from; never a secret (not even the access key id)."""
    from botocore.exceptions import BotoCoreError, ProfileNotFound

    fix = ("set AWS_PROFILE (or `profile` in the config), or AWS_ACCESS_KEY_ID and "
           "AWS_SECRET_ACCESS_KEY, or run where an instance or container role applies; "
           "nginx-like workers need the variables passed explicitly")
    try:
        credentials = _session(connection).get_credentials()
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()  # refreshes SSO/role sessions now
            if not frozen.access_key:
                credentials = None
    except ProfileNotFound as e:
        report.bad(f"credentials: {e}", "check the profile name and ~/.aws/config")
        return False
    except BotoCoreError as e:
        report.bad(f"credentials: cannot be resolved: {e}", fix)
        return False
    if credentials is None:
        report.bad("credentials: none found (environment, profile, SSO, container or instance "
                   "role)", fix)
        return False
    method = getattr(credentials, "method", "") or "unknown"
    source = _CREDENTIAL_SOURCES.get(method, method)
    profile = connection.profile or os.environ.get("AWS_PROFILE")
    report.ok(f"credentials: found ({source}{', profile ' + profile if profile else ''})")
    return True


def endpoint_url(connection: Connection, region: str) -> str:
    """The URL the module's client will use: the config's, else botocore's own resolution
    (AWS_ENDPOINT_URL_KMS, AWS_ENDPOINT_URL, FIPS/dual-stack settings, the region)."""
    if connection.endpoint_url:
        return connection.endpoint_url
    client = _session(connection).create_client("kms", region_name=region)
    return str(client.meta.endpoint_url)


def _ca_file(connection: Connection) -> str | None:
    if connection.ca_bundle:
        return connection.ca_bundle
    if os.environ.get("AWS_CA_BUNDLE"):
        return os.environ["AWS_CA_BUNDLE"]
    from botocore.httpsession import get_cert_path

    path = get_cert_path(True)
    return path if isinstance(path, str) else None


def check_endpoint(connection: Connection, url: str, timeout: float, report: Report) -> bool:
    """A TCP connection, and for https:// a verified TLS handshake, within `timeout`."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    start = time.monotonic()
    fix_net = (f"is the endpoint right ({url})? is the network, a proxy or a VPC endpoint "
               "needed? (an emulator: is it running?)")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            detail = "TCP"
            if parts.scheme == "https":
                cafile = _ca_file(connection)
                context = ssl.create_default_context(cafile=cafile)
                sock.settimeout(timeout)
                with context.wrap_socket(sock, server_hostname=host) as tls:
                    detail = f"{tls.version()}, certificate verified"
                    if cafile and (connection.ca_bundle or os.environ.get("AWS_CA_BUNDLE")):
                        detail += f" with {cafile}"
    except ssl.SSLCertVerificationError as e:
        report.bad(f"endpoint: {url}: certificate not trusted: {e.verify_message}",
                   "set ca_bundle in the config (or AWS_CA_BUNDLE) to the CA that issued the "
                   "endpoint's certificate")
        return False
    except ssl.SSLError as e:
        report.bad(f"endpoint: {url}: TLS handshake failed: {e.reason or e}",
                   "is it an https:// endpoint? check ca_bundle")
        return False
    except socket.gaierror as e:
        report.bad(f"endpoint: {url}: cannot resolve {host}: {e.strerror}", fix_net)
        return False
    except TimeoutError:
        report.bad(f"endpoint: {url}: no connection within {timeout:g} s", fix_net)
        return False
    except OSError as e:
        report.bad(f"endpoint: {url}: {e.strerror or e}", fix_net)
        return False
    elapsed = (time.monotonic() - start) * 1000
    proxy = next((v for v in ("HTTPS_PROXY", "https_proxy") if os.environ.get(v)), None)
    note = f"; note: {proxy} is set, the module's requests go through it" if proxy else ""
    report.ok(f"endpoint: {url} reachable ({detail}, {elapsed:.0f} ms){note}")
    return True


# --- keys -----------------------------------------------------------------------------------------


def _algorithm(public: PublicKey) -> tuple[str, str]:
    """(KMS operation, algorithm) a DryRun checks: what the module uses most (RSA: PKCS#1 v1.5
    with SHA-256; EC: the curve's one; an HMAC key: its one MAC; key agreement: ECDH)."""
    spec = KEY_SPECS[public.key_spec]
    if public.key_usage == ENCRYPT_DECRYPT:
        return "Decrypt", algorithm_name(RSAES_OAEP, "SHA_256")
    if public.key_usage == GENERATE_VERIFY_MAC:
        return "GenerateMac", spec.mac_algorithms[0]
    if public.key_usage == KEY_AGREEMENT:
        return "DeriveSharedSecret", spec.curve or ""
    return "Sign", spec.signing_algorithms[0]


_DRY_RUNS = {"Sign": "dry_run_sign", "Decrypt": "dry_run_decrypt", "GenerateMac": "dry_run_mac",
             "DeriveSharedSecret": "dry_run_derive"}


def check_key(backend: Any, name: str, label: str, public: PublicKey | None,
              report: Report, shown: str | None = None) -> bool:
    """GetPublicKey (unless already done), then a DryRun of the key's operation."""
    from ..core.token import usable
    from ..kms import KmsError

    shown = shown or (f"{name} ({label})" if label != name else name)
    if public is None:
        try:
            answer = backend.public_keys([name])[0]  # DescribeKey for an HMAC key
        except KmsError as e:
            answer = e
        if isinstance(answer, KmsError):
            detail = f": {answer.message}" if answer.message else ""
            report.bad(f"key {shown}: {answer.operation}: {answer.code}{detail}",
                       _fix_for(answer.code, name, answer.operation))
            return False
        public = answer
    assert public is not None
    what = f"{public.key_spec} {public.key_usage}"
    if not usable(public.key_spec, public.key_usage, name):
        report.bad(f"key {shown}: {what} is not supported: the token leaves it out",
                   "use an asymmetric key (RSA, ECC, Ed25519, ML-DSA) or an HMAC key, with a "
                   "usage its key spec allows (docs/design.md, \"Key types\")")
        return False
    operation, algorithm = _algorithm(public)
    try:
        answered = getattr(backend, _DRY_RUNS[operation])(name, algorithm)
    except KmsError as e:
        report.bad(f"key {shown}: {what}: {operation} refused: {e.code}"
                   f"{': ' + e.message if e.message else ''}", _fix_for(e.code, name, operation))
        return False
    how = "DryRun" if answered else "the endpoint ignores DryRun and performed it"
    report.ok(f"key {shown}: {what}, kms:{operation} allowed ({how})")
    return True


def check_token(tc: TokenConfig, index: int, report: Report) -> int:
    """The keys of one [[token]] table; returns how many are usable."""
    from ..core.token import alias_label, is_alias, listed_keys
    from ..kms import KmsError, backend_for

    backend = backend_for(tc.connection)
    usable_keys = 0
    if tc.keys is not None:
        for ref in tc.keys:
            label = ref.label or (alias_label(ref.key) if is_alias(ref.key) else ref.key)
            usable_keys += check_key(backend, ref.key, label, None, report)
        return usable_keys
    filters = []
    if tc.alias_prefix:
        filters.append(f"alias prefix {tc.alias_prefix}")
    if tc.tags:
        filters.append("tags " + ", ".join(f"{k}={v}" for k, v in tc.tags.items()))
    try:
        keys = listed_keys(backend, tc)
    except KmsError as e:
        report.bad(f"listing keys: {e.operation}: {e.code}",
                   _fix_for(e.code, "*", e.operation,
                            "allow kms:ListKeys, kms:ListAliases, kms:DescribeKey and "
                            "kms:ListResourceTags, or name the keys in the config (keys = [...])"))
        return 0
    if not keys:
        where = f" matching {' and '.join(filters)}" if filters else ""
        report.bad(f"listing keys: no usable key{where}",
                   "create a key the token can use (enabled; docs/design.md, \"Key types\"), or fix "
                   "alias_prefix/tags (`pkcs11-kms keys -v` shows skipped keys)")
        return 0
    report.ok(f"listing keys: {len(keys)} usable key{'s' if len(keys) != 1 else ''}"
              f"{' matching ' + ' and '.join(filters) if filters else ''}")
    for key in keys:
        public = backend.get_public_key(key.arn)  # cached by listing
        shown = f"{key.label} ({key.key_id})" if key.label != key.key_id else key.key_id
        usable_keys += check_key(backend, key.arn, key.label, public, report, shown)
    return usable_keys


def run(config_path: str | None, timeout: float | None, out: TextIO | None = None) -> int:
    from .selection import quiet_module_logs

    quiet_module_logs()
    report = Report(out or sys.stdout)
    check_installation(report)
    config = check_config(config_path, report)
    if config is None:
        return _summary(report, 0)
    checked: dict[Connection, bool] = {}
    total = 0
    for index, tc in enumerate(config.tokens, 1):
        name = tc.label or ("one token per key" if tc.token_per_key else "default label")
        report.heading(f"[[token]] #{index} {name!r}")
        c = tc.connection
        if c not in checked:
            region = check_region(c, report)
            creds = check_credentials(c, report)
            reachable = False
            if region:
                try:
                    url = endpoint_url(c, region)
                except Exception as e:  # noqa: BLE001 - botocore's endpoint resolution
                    report.bad(f"endpoint: cannot be resolved: {e}")
                else:
                    reachable = check_endpoint(c, url, timeout or c.connect_timeout, report)
            checked[c] = bool(region and creds and reachable)
        else:
            report.note("connection: as checked above")
        if not checked[c]:
            report.note("keys: not checked until the problems above are fixed")
            continue
        total += check_token(tc, index, report)
    return _summary(report, total)


def _summary(report: Report, keys: int) -> int:
    if report.problems:
        plural = "s" if report.problems != 1 else ""
        print(f"\n{BAD} {report.problems} problem{plural}: fix the lines marked {BAD} above",
              file=report.out, flush=True)
        return 1
    print(f"\n{OK} everything is usable: {keys} key{'s' if keys != 1 else ''}", file=report.out,
          flush=True)
    return 0
