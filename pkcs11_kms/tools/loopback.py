"""Loopback-only listening for the servers this package runs: the KMS emulator and
`pkcs11-kms tsa --serve` bind nothing a remote client could reach."""

from __future__ import annotations

import ipaddress


def loopback_host(host: str) -> str:
    """``host`` if it is a loopback address ("localhost" means 127.0.0.1), else ValueError."""
    address = "127.0.0.1" if host == "localhost" else host
    try:
        if ipaddress.ip_address(address).is_loopback:
            return address
    except ValueError:
        pass
    raise ValueError(f"{host!r} is not a loopback address")
