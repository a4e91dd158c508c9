"""The module's trust boundary (docs/security.md): what it reads from its environment in a
privileged process, which files it accepts, and text from outside in log lines.

- `privileged()`: the process runs with rights its caller does not have (setuid, setgid, file
  capabilities: the kernel's AT_SECURE). Then nothing the caller can set in the environment may
  redirect the module: `environ()` leaves out the variables in `PRIVILEGED_IGNORED`, home
  directories come from the password database, not $HOME, and kms/aws.py keeps botocore from
  reading endpoints, CA bundles and config files the environment names.
- `check_file()`: a file the module reads or writes (config, certificates, CA bundle, log file)
  must not be changeable by another user, nor reachable through a directory another user can
  write, as ssh's StrictModes; the one exception is a shared directory with the sticky bit
  (/tmp), where only an entry's owner can replace it, so the entry must be ours or root's.
- `escape()`: control characters of outside text, so that no log line can start inside it.
- `wipe()`: zeroes a buffer that held a secret (decrypted plaintext, random bytes) once the
  host has it or the operation ended without delivering it.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
import stat
from collections.abc import Mapping

AT_SECURE = 23  # <elf.h>: "boolean, was exec setuid-like?"
# What a caller of a privileged process could use to redirect the module (issue #11).
PRIVILEGED_IGNORED = frozenset({
    "PKCS11_KMS_CONFIG", "PKCS11_KMS_LOG", "OPENSSL_ENGINE_KMS_LOG", "XDG_CONFIG_HOME", "HOME",
    "AWS_CA_BUNDLE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "REQUESTS_CA_BUNDLE",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    # Where botocore's credential providers fetch credentials from (kms/privileged.py)
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME",
})
_ENDPOINT_VARS = re.compile(r"AWS_ENDPOINT_URL(_.*)?")
_MAX_LINKS = 40  # as the kernel's path walk


@functools.cache
def privileged() -> bool:
    """True in a setuid/setgid or capability-raised process: getauxval(AT_SECURE)."""
    import ctypes

    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):  # not glibc: the ids tell a setuid/setgid exec
        return os.getuid() != os.geteuid() or os.getgid() != os.getegid()
    getauxval.restype = ctypes.c_ulong
    getauxval.argtypes = [ctypes.c_ulong]
    return bool(getauxval(AT_SECURE))


def ignored(name: str) -> bool:
    """Whether a privileged process ignores this environment variable."""
    return name in PRIVILEGED_IGNORED or bool(_ENDPOINT_VARS.fullmatch(name))


def environ(source: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """The environment the module may read: `source` (os.environ), without the variables a
    privileged process ignores. Never changes os.environ: the host's."""
    source = os.environ if source is None else source
    if not privileged():
        return source
    return {name: value for name, value in source.items() if not ignored(name)}


def home(env: Mapping[str, str] | None = None) -> str:
    """The home directory for `~`: $HOME, or in a privileged process (or without $HOME) the
    effective user's from the password database."""
    env = environ() if env is None else env
    if env.get("HOME"):
        return env["HOME"]
    try:
        return pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        return "/"


def expand(path: str, env: Mapping[str, str] | None = None) -> str:
    """`~` and `~/...` expanded with home(); `~user` from the password database."""
    if path == "~" or path.startswith("~/"):
        return home(env) + path[1:]
    if path.startswith("~") and not privileged():
        return os.path.expanduser(path)
    if path.startswith("~"):
        name, _, rest = path[1:].partition("/")
        try:
            return os.path.join(pwd.getpwnam(name).pw_dir, rest)
        except KeyError:
            return path
    return path


# --- files other users could change ---------------------------------------------------------


class Untrusted(Exception):
    """Another user could change the file: the message names the file and the fix."""


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _who() -> str:
    return "root" if os.geteuid() == 0 else f"root or {_user(os.geteuid())}"


def check_stat(st: os.stat_result, path: str) -> None:
    """Untrusted when the file itself is another user's or writable by group or others."""
    if not _trusted_owner(st.st_uid):
        raise Untrusted(
            f"{path} belongs to {_user(st.st_uid)}, who could change it: it must belong to "
            f"{_who()} (chown {_user(os.geteuid())} {path})")
    if st.st_mode & 0o022:
        raise Untrusted(
            f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}): "
            f"chmod go-w {path}")


def _check_directory(directory: str, entry: str, entry_uid: int | None) -> None:
    """Untrusted when another user could replace `entry` in `directory` (entry_uid: its owner,
    None when it does not exist)."""
    st = os.stat(directory)
    if not _trusted_owner(st.st_uid):
        raise Untrusted(
            f"the directory {directory} belongs to {_user(st.st_uid)}, who could replace "
            f"{entry}: keep the file in directories that belong to {_who()}")
    if not st.st_mode & 0o022:
        return
    if st.st_mode & stat.S_ISVTX and entry_uid is not None and _trusted_owner(entry_uid):
        return  # sticky (/tmp): only the entry's owner, ours or root, can replace it
    raise Untrusted(
        f"the directory {directory} is writable by other users "
        f"(mode {stat.S_IMODE(st.st_mode):04o}), who could replace {entry}: chmod go-w "
        f"{directory}, or keep the file in a directory only {_who()} can write")


def check_file(path: str, *, symlink: bool = True, missing_ok: bool = False) -> str:
    """Check that no other user than root and the effective user can change what `path`
    names: every directory the path is looked up in (symbolic links followed, each link's
    directory included) and the file itself. Returns the resolved path. Raises Untrusted, or
    OSError when a directory on the way cannot be read. `symlink=False`: the last component
    must not be a symbolic link (a log file, opened with O_NOFOLLOW). `missing_ok`: a path
    whose remaining components do not exist yet passes (a log file to create)."""
    todo = [p for p in os.path.abspath(path).split("/") if p]
    todo.reverse()
    current = "/"
    links = 0
    while todo:
        name = todo.pop()
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        entry = os.path.join(current, name)
        try:
            st = os.lstat(entry)
        except FileNotFoundError:
            if missing_ok:
                _check_directory(current, entry, None)
                return os.path.join(entry, *reversed(todo))
            raise
        _check_directory(current, entry, st.st_uid)
        if stat.S_ISLNK(st.st_mode):
            if not todo and not symlink:
                raise Untrusted(f"{entry} is a symbolic link: name the file itself")
            links += 1
            if links > _MAX_LINKS:
                raise Untrusted(f"{path}: too many symbolic links")
            target = os.readlink(entry)
            if target.startswith("/"):
                current = "/"
            todo.extend(reversed([p for p in target.split("/") if p]))
            continue
        if todo:
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(20, "Not a directory", entry)
            current = entry
            continue
        check_stat(st, entry)
        return entry
    return current  # the path named a directory


# --- outside text in log lines ---------------------------------------------------------------

# C0 and C1 controls, DEL, and Unicode's line and paragraph separators: any of them could end a
# log line (or move the cursor) and let outside text start a forged one.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100
                                else f"\\u{ord(char):04x}")


def escape(text: str) -> str:
    """`text` on one line: control characters written as \\n, \\r, \\t, \\xNN, \\uNNNN."""
    return _CONTROL.sub(_escaped, text)


# --- secrets in memory -----------------------------------------------------------------------


def wipe(buffer: bytes | bytearray | None) -> None:
    """Zeroes a bytearray in place (bytes are immutable: Python gives no way to clear them)."""
    if isinstance(buffer, bytearray):
        buffer[:] = bytes(len(buffer))  # same length: written over in place, not reallocated
