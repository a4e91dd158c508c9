"""The `pkcs11-kms` command: helpers for users of the module (its path, for now)."""

from __future__ import annotations

import argparse
import sys

from . import __version__, module_path


def _module_path(_args: argparse.Namespace) -> int:
    path = module_path()
    if not path.is_file():
        print(f"pkcs11-kms: {path} is missing: reinstall the package", file=sys.stderr)
        return 1
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pkcs11-kms", description="AWS KMS keys as a PKCS#11 token")
    parser.add_argument("--version", action="version", version=f"pkcs11-kms {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("module-path", help="print the absolute path of libkms-pkcs11.so").set_defaults(
        run=_module_path
    )
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
