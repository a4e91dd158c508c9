"""Mechanism families: importing this registers every mechanism the token offers."""

# Registration order is the order of C_GetMechanismList: RSA hash-and-sign first (see
# core.mechanisms.offered).
from . import rsa_pkcs, rsa_pss, ecdsa, rsa_oaep, digests  # noqa: F401, I001
