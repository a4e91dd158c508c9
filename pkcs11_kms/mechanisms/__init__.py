"""Mechanism families, and the one ordered list of the mechanisms the token offers."""

from ..core.mechanisms import install
from . import digests, ecdh, ecdsa, eddsa, mac, ml_dsa, rsa_oaep, rsa_pkcs, rsa_pss

# The order of C_GetMechanismList: consumers such as pkcs11-tool --test take the first signing
# mechanism of the list, so what KMS does best (RSA hash-and-sign) comes first.
MECHANISMS = (
    *rsa_pkcs.MECHANISMS,
    *rsa_pss.MECHANISMS,
    *ecdsa.MECHANISMS,
    *eddsa.MECHANISMS,
    *ml_dsa.MECHANISMS,
    *mac.MECHANISMS,
    *rsa_oaep.MECHANISMS,
    *ecdh.MECHANISMS,
    *digests.MECHANISMS,
)
install(MECHANISMS)
