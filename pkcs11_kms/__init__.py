"""pkcs11-kms: a PKCS#11 module whose keys live in AWS KMS."""

from pathlib import Path

__version__ = "0.1.0"


def module_path() -> Path:
    """The absolute path of the installed libkms-pkcs11.so."""
    return (Path(__file__).resolve().parent / "libkms-pkcs11.so")
