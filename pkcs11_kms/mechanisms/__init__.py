"""Mechanism families: importing this registers every mechanism the token offers."""

from . import ecdsa, rsa_oaep, rsa_pkcs, rsa_pss  # noqa: F401
