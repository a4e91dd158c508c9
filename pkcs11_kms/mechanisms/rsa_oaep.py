"""RSA-OAEP (PKCS#11 §2.1.8): decryption by KMS; encryption with the public key, or by KMS.

KMS decrypts RSAES_OAEP_SHA_1 and RSAES_OAEP_SHA_256 with MGF1 over the same hash and no label.
"""

from __future__ import annotations

from ..ck import CKF, CKK, CKM, CKR, CKZ
from ..core.mechanisms import Kind, Mechanism
from ..core.operations import KeyUse
from ..core.params import MechanismArgs, OaepParams
from ..errors import PKCS11Error
from ..kms.specs import OAEP_HASHES, RSAES_OAEP
from .base import key_use, rsa_public_key
from .hashes import HASHES, Hash


def oaep_hash(args: MechanismArgs) -> Hash:
    p = args.params
    if not isinstance(p, OaepParams):
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "CK_RSA_PKCS_OAEP_PARAMS required")
    if p.label or p.source not in (0, CKZ.DATA_SPECIFIED):
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "KMS does OAEP without a label")
    if p.hash_alg == 0 and p.mgf == 0:  # pkcs11-provider when the user named no OAEP digest
        return HASHES[CKM.SHA_1]
    h = HASHES.get(p.hash_alg)
    # mgf 0 with a hash: pkcs11-provider 1.0 when the user named only the OAEP digest; OpenSSL's
    # MGF1 digest then defaults to that digest.
    if h is None or h.kms not in OAEP_HASHES or p.mgf not in (0, h.mgf):
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "KMS does OAEP with SHA-1 or SHA-256 and "
                          "MGF1 over the same hash")
    return h


class Oaep:
    def __init__(self, kind: Kind, use: KeyUse, hash_: Hash) -> None:
        self.decrypting = kind == Kind.DECRYPT
        self.use = use
        self.hash = hash_
        self._data = bytearray()

    @property
    def modulus_bytes(self) -> int:
        return self.use.key.spec.bits // 8

    @property
    def max_plaintext(self) -> int:
        return self.modulus_bytes - 2 * self.hash.size - 2

    def output_length(self, data_length: int) -> int:
        return self.max_plaintext if self.decrypting else self.modulus_bytes

    def update(self, data: bytes) -> None:
        limit = self.modulus_bytes if self.decrypting else self.max_plaintext
        if len(self._data) + len(data) > limit:
            raise PKCS11Error(CKR.ENCRYPTED_DATA_LEN_RANGE if self.decrypting
                              else CKR.DATA_LEN_RANGE, f"more than {limit} bytes")
        self._data += data

    def finish(self) -> bytes | bytearray:
        data = bytes(self._data)
        algorithm = self.hash.kms_algorithm(RSAES_OAEP)
        if self.decrypting:
            if len(data) != self.modulus_bytes:
                raise PKCS11Error(CKR.ENCRYPTED_DATA_LEN_RANGE, f"{len(data)} bytes")
            # the plaintext in a buffer the module wipes (botocore's own bytes it cannot)
            return bytearray(self.use.backend.decrypt(self.use.key_ref, data, algorithm))
        if len(data) > self.max_plaintext:
            raise PKCS11Error(CKR.DATA_LEN_RANGE, f"at most {self.max_plaintext} bytes")
        if self.use.kms_public_operations:
            return self.use.backend.encrypt(self.use.key_ref, data, algorithm)
        from cryptography.hazmat.primitives.asymmetric import padding  # (docs/performance.md)

        mgf = padding.MGF1(self.hash.crypto())
        return rsa_public_key(self.use).encrypt(data, padding.OAEP(mgf, self.hash.crypto(), None))

    def verify(self, signature: bytes) -> None:
        raise PKCS11Error(CKR.FUNCTION_NOT_SUPPORTED)


def _start(kind: Kind, use: KeyUse | None, args: MechanismArgs) -> Oaep:
    return Oaep(kind, key_use(use), oaep_hash(args))


MECHANISMS = (
    Mechanism(CKM.RSA_PKCS_OAEP, CKK.RSA, CKF.ENCRYPT | CKF.DECRYPT, "ENCRYPT_DECRYPT", _start,
              parameter="CK_RSA_PKCS_OAEP_PARAMS"),
)
