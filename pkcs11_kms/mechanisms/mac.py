"""HMAC with KMS HMAC keys (PKCS#11 §2.20-2.25 "general-length" and fixed HMAC):
CKM_SHA224_HMAC ... CKM_SHA512_HMAC and their _GENERAL forms, through C_Sign and C_Verify.

KMS computes the MAC (GenerateMac) over 1 to 4096 bytes with the key spec's one hash: an HMAC_256
key does only CKM_SHA256_HMAC(_GENERAL). A _GENERAL mechanism's MAC is the full MAC's first
CK_MAC_GENERAL_PARAMS bytes. Verifying a full-length MAC asks KMS (VerifyMac); a shortened one is
compared here with the full MAC KMS gives (VerifyMac takes only full-length MACs).
"""

from __future__ import annotations

import hmac

from ..ck import CKF, CKK, CKM, CKR
from ..core.mechanisms import Kind, Mechanism, Start
from ..core.operations import KeyUse
from ..core.params import MacLength, MechanismArgs
from ..errors import PKCS11Error
from ..kms.specs import GENERATE_VERIFY_MAC, HMAC, KEY_SPECS, MAX_MESSAGE, digest_bytes
from .base import key_use, no_params


class Mac:
    def __init__(self, use: KeyUse, algorithm: str, full: int, length: int) -> None:
        self.use = use
        self.algorithm = algorithm  # HMAC_SHA_256 ...
        self.full = full
        self.length = length
        self._data = bytearray()

    def output_length(self, data_length: int) -> int:
        return self.length

    def update(self, data: bytes) -> None:
        if len(self._data) + len(data) > MAX_MESSAGE:
            raise PKCS11Error(CKR.DATA_LEN_RANGE, f"KMS MACs at most {MAX_MESSAGE} bytes")
        self._data += data

    def _message(self) -> bytes:
        if not self._data:
            raise PKCS11Error(CKR.DATA_LEN_RANGE, "KMS MACs no empty message")
        return bytes(self._data)

    def finish(self) -> bytes:
        mac = self.use.backend.generate_mac(self.use.key_ref, self._message(), self.algorithm)
        return mac[:self.length]

    def verify(self, signature: bytes) -> None:
        if len(signature) != self.length:
            raise PKCS11Error(CKR.SIGNATURE_LEN_RANGE, f"{len(signature)}-byte MAC")
        if self.length == self.full:
            valid = self.use.backend.verify_mac(self.use.key_ref, self._message(), signature,
                                                self.algorithm)
        else:
            valid = hmac.compare_digest(self.finish(), signature)
        if not valid:
            raise PKCS11Error(CKR.SIGNATURE_INVALID)


def _start(spec: str, general: bool) -> Start:
    kms_spec = KEY_SPECS[spec]
    assert kms_spec.hash is not None
    full = digest_bytes(kms_spec.hash)
    (algorithm,) = kms_spec.mac_algorithms

    def start(kind: Kind, use: KeyUse | None, args: MechanismArgs) -> Mac:
        if not general:
            no_params(args)
            return Mac(key_use(use), algorithm, full, full)
        p = args.params
        if not isinstance(p, MacLength) or not 1 <= p.length <= full:
            raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, f"a MAC length of 1 to {full} bytes")
        return Mac(key_use(use), algorithm, full, p.length)

    return start


# KMS HMAC key spec -> its two mechanisms
_MECHANISMS = {
    "HMAC_224": (CKM.SHA224_HMAC, CKM.SHA224_HMAC_GENERAL),
    "HMAC_256": (CKM.SHA256_HMAC, CKM.SHA256_HMAC_GENERAL),
    "HMAC_384": (CKM.SHA384_HMAC, CKM.SHA384_HMAC_GENERAL),
    "HMAC_512": (CKM.SHA512_HMAC, CKM.SHA512_HMAC_GENERAL),
}
assert set(_MECHANISMS) == {s.name for s in KEY_SPECS.values() if s.family == HMAC}

MECHANISMS = tuple(
    Mechanism(mechanism, CKK.GENERIC_SECRET, CKF.SIGN | CKF.VERIFY, GENERATE_VERIFY_MAC,
              _start(spec, general), key_specs=frozenset({spec}),
              parameter="CK_MAC_GENERAL_PARAMS" if general else None)
    for spec, pair in _MECHANISMS.items()
    for mechanism, general in zip(pair, (False, True), strict=True)
)
