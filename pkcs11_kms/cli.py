"""The `pkcs11-kms` command: module-path, keys, doctor, emulator and tsa for users of the module.

Only argument parsing lives here; each subcommand's logic is in pkcs11_kms.tools and is imported
when that subcommand runs, so `pkcs11-kms module-path` stays instant. The PKCS#11 module never
imports this file.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from . import __version__, module_path

if TYPE_CHECKING:
    from .config import Config


def _module_path(_args: argparse.Namespace) -> int:
    path = module_path()
    if not path.is_file():
        print(f"pkcs11-kms: {path} is missing: reinstall the package", file=sys.stderr)
        return 1
    print(path)
    return 0


def _load_config(path: str | None) -> Config:
    """--config FILE, else the module's own lookup ($PKCS11_KMS_CONFIG, ~/.config, /etc)."""
    from .config import load_config

    if path is not None:
        if not os.path.isfile(os.path.expanduser(path)):
            from .errors import ConfigError

            raise ConfigError(path, "no such file (named by --config)")
        path = os.path.abspath(os.path.expanduser(path))
    return load_config(path)


def _keys(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .tools import keys, selection

    selection.quiet_module_logs("info" if args.verbose else None)
    try:
        config = _load_config(args.config)
    except ConfigError as e:
        print(f"pkcs11-kms: {e.why}", file=sys.stderr)
        return 2
    return keys.run(config, args.json)


def _doctor(args: argparse.Namespace) -> int:
    from .tools import doctor

    return doctor.run(args.config, args.timeout)


def _emulator(args: argparse.Namespace) -> int:
    from .tools import emulator_cmd

    return emulator_cmd.run(args.dir, args.port, args.tls, args.region)


def _tsa(args: argparse.Namespace) -> int:
    from .tools import tsa_cmd

    return tsa_cmd.run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pkcs11-kms",
                                     description="AWS KMS keys as a PKCS#11 token")
    parser.add_argument("--version", action="version", version=f"pkcs11-kms {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "module-path", help="print the absolute path of libkms-pkcs11.so"
    ).set_defaults(run=_module_path)

    config_help = "config file (default: $PKCS11_KMS_CONFIG, ~/.config/pkcs11-kms/config.toml, " \
                  "/etc/pkcs11-kms/config.toml, as the module looks it up)"
    keys = commands.add_parser(
        "keys", aliases=["list"], help="list the tokens and keys the config selects, with URIs",
        description="Lists every token and key the module would show, found the way the module "
        "finds them, with PKCS#11 URIs to paste into openssl, p11tool or pkcs11-tool.")
    keys.add_argument("--config", metavar="FILE", help=config_help)
    keys.add_argument("--json", action="store_true", help="print JSON for scripts")
    keys.add_argument("-v", "--verbose", action="store_true",
                      help="show the module's info log lines (why a key was skipped)")
    keys.set_defaults(run=_keys)

    doctor = commands.add_parser(
        "doctor", help="check config, credentials, region, endpoint and key permissions",
        description="Checks that the module can work here: the config file, AWS credentials "
        "(the source only, never a secret), region, the KMS endpoint, and whether this identity "
        "may use each key (KMS DryRun). Exit status 0 only when everything is usable.")
    doctor.add_argument("--config", metavar="FILE", help=config_help)
    doctor.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="seconds for the endpoint connection test (default: the config's "
                        "connect_timeout)")
    doctor.set_defaults(run=_doctor)

    emulator = commands.add_parser(
        "emulator", help="run the KMS emulator on 127.0.0.1 with demo keys and a matching config",
        description="Starts the project's KMS emulator on 127.0.0.1 with three keys "
        "(alias/demo-rsa: RSA-2048 sign, alias/demo-ec: P-256 sign, alias/demo-decrypt: RSA-3072 "
        "decrypt), writes a module config for them and prints the environment to use it. "
        "Runs until Ctrl-C or SIGTERM; the keys live only as long as the emulator.")
    emulator.add_argument("--dir", default="pkcs11-kms-emulator",
                          help="state directory for config.toml, env.sh and the TLS files "
                          "(default: ./pkcs11-kms-emulator)")
    emulator.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    emulator.add_argument("--tls", action="store_true",
                          help="serve HTTPS with a generated test CA (DIR/tls/ca.pem)")
    emulator.add_argument("--region", default="eu-west-1", help="region name (eu-west-1)")
    emulator.set_defaults(run=_emulator)

    tsa = commands.add_parser(
        "tsa", help="an RFC 3161 time-stamping authority signing with a token key",
        description="Answers RFC 3161 time-stamp queries (openssl ts -query) with a key of a "
        "PKCS#11 token: the reply's signature is made by the module (the key stays in KMS). "
        "One query from --in to --out, or an HTTP server with --serve.")
    tsa.add_argument("--key", required=True, metavar="URI",
                     help="the signing key: pkcs11:token=...;object=...;type=private")
    tsa.add_argument("--cert", required=True, metavar="PEM",
                     help="the TSA certificate of that key (extendedKeyUsage critical, "
                     "timeStamping)")
    tsa.add_argument("--chain", action="append", default=[], metavar="PEM",
                     help="intermediate CA certificates to include when the query asks for "
                     "certificates (repeatable)")
    tsa.add_argument("--in", dest="input", default="-", metavar="FILE",
                     help="the DER TimeStampReq (default: stdin)")
    tsa.add_argument("--out", dest="output", default="-", metavar="FILE",
                     help="where to write the DER TimeStampResp (default: stdout)")
    tsa.add_argument("--serve", action="store_true",
                     help="serve RFC 3161 over HTTP (POST application/timestamp-query)")
    tsa.add_argument("--host", default="127.0.0.1",
                     help="--serve address, loopback only (127.0.0.1)")
    tsa.add_argument("--port", type=int, default=3161, help="--serve port (3161; 0: a free one)")
    tsa.add_argument("--policy", default=None, metavar="OID",
                     help="the TSA policy OID put in every token (default 1.2.3.4.1, a "
                     "placeholder: use your own)")
    tsa.add_argument("--digest", choices=("sha256", "sha384", "sha512"), default=None,
                     help="hash for the signature (default: sha256 for RSA, the curve's for EC)")
    tsa.add_argument("--module", default=None, metavar="SO",
                     help="PKCS#11 module to sign with (default: this package's libkms-pkcs11.so, "
                     "or the URI's module-path)")
    tsa.add_argument("--config", metavar="FILE",
                     help="config file handed to the module (default: the module's own lookup)")
    tsa.set_defaults(run=_tsa)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pkcs11-kms keys | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
