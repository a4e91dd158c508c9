"""p11-kit as the machine sees it, for tests: conf/p11-kit/kms.module installed in a temporary
module directory that programs see as p11-kit's system directory.

p11-kit reads module configs from fixed directories, and skips the user's (~/.config/pkcs11/modules)
in programs running as root. So as root (CI) a program runs in a private mount namespace where that
directory is mounted over /usr/share/p11-kit/modules (and an empty one over /etc/pkcs11/modules),
which also hides the machine's other modules; as another user, p11-kit reads it through HOME's
~/.config/pkcs11/modules.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hosts import run, tool
from keyseed import SeededKey

MODULE_FILE = Path(__file__).resolve().parents[1] / "conf" / "p11-kit" / "kms.module"
PROXY = Path("/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so")
SYSTEM_DIRS = (Path("/usr/share/p11-kit/modules"), Path("/etc/pkcs11/modules"))
# Runs "$@" after mounting $P11KIT_MODULES over the system module directory (and an empty
# directory over the administrator's one) in the mount namespace unshare created.
NAMESPACE_SCRIPT = """set -e
mount --bind "$P11KIT_MODULES" /usr/share/p11-kit/modules
if [ -d /etc/pkcs11/modules ]; then mount --bind "$P11KIT_EMPTY" /etc/pkcs11/modules; fi
exec "$@"
"""


@dataclass
class P11Kit:
    modules: Path                  # where kms.module is installed
    home: Path
    env: dict[str, str]
    keys: dict[str, SeededKey]     # "rsa", "ec"
    module_path: str
    tmp: Path

    def install(self, text: str) -> None:
        (self.modules / "kms.module").write_text(text)

    def run(self, cmd: list[str], env: dict[str, str] | None = None, **kw):
        """`cmd` as a program that sees only the temporary p11-kit module directory."""
        env = dict(env or self.env)
        if os.geteuid() == 0:
            env.update(P11KIT_MODULES=str(self.modules), P11KIT_EMPTY=str(self.tmp / "empty"))
            cmd = [tool("unshare", "util-linux"), "--mount", "--propagation", "private",
                   "sh", "-c", NAMESPACE_SCRIPT, "sh", *cmd]
        return run(cmd, env, **kw)


def module_file(module_path: str, extra: str = "") -> str:
    text = MODULE_FILE.read_text()
    assert "module: @MODULE_PATH@\n" in text
    return text.replace("@MODULE_PATH@", module_path) + extra
