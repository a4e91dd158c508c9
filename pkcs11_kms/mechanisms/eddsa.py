"""EdDSA signatures with Ed25519 keys (PKCS#11 3.0 §2.3.14): CKM_EDDSA, pure Ed25519.

KMS signs pure Ed25519 over the message itself (ED25519_SHA_512, MessageType RAW, 1 to 4096
bytes), without a context. No parameter is Ed25519 (pkcs11-provider, GnuTLS and OpenSSH pass
none). Any CK_EDDSA_PARAMS asks for what KMS cannot give: without phFlag Ed25519ctx (§2.3.14's
table); with it Ed25519ph, where KMS's ED25519_PH_SHA_512 hashes the 64-byte digest it is given
once more, so its signature is not RFC 8032's Ed25519ph of the message (docs/design.md, "Ed25519,
ML-DSA and HMAC"): CKR_MECHANISM_PARAM_INVALID. The signature is RFC 8032's 64 bytes, as KMS's.
"""

from __future__ import annotations

from ..ck import CKF, CKK, CKM, CKR
from ..core.mechanisms import Kind, Mechanism
from ..core.operations import KeyUse
from ..core.params import EddsaParams, MechanismArgs
from ..errors import PKCS11Error
from ..kms.specs import ED25519_SHA_512, MAX_MESSAGE, SIGN_VERIFY
from .base import Signature, ed25519_public_key, key_use


class Eddsa(Signature):
    @property
    def max_input(self) -> int:
        return MAX_MESSAGE

    def kms_input(self, value: bytes) -> tuple[bytes, str, str]:
        if not value:
            raise PKCS11Error(CKR.DATA_LEN_RANGE, "KMS signs no empty message")
        return value, "RAW", ED25519_SHA_512

    def verify_locally(self, value: bytes, signature: bytes) -> None:
        ed25519_public_key(self.use).verify(signature, value)


def _start(kind: Kind, use: KeyUse | None, args: MechanismArgs) -> Eddsa:
    if args.params is not None:
        what = "Ed25519ph" if isinstance(args.params, EddsaParams) and args.params.prehash \
            else "Ed25519ctx or a context"
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, f"KMS cannot sign {what}")
    return Eddsa(key_use(use), None)


MECHANISMS = (
    Mechanism(CKM.EDDSA, CKK.EC_EDWARDS, CKF.SIGN | CKF.VERIFY, SIGN_VERIFY, _start,
              parameter="CK_EDDSA_PARAMS", parameter_optional=True),
)
