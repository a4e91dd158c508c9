"""RSA PKCS#1 v1.5 signatures (PKCS#11 §2.1.6, §2.1.7): CKM_RSA_PKCS and CKM_SHA*_RSA_PKCS."""

from __future__ import annotations

from ..ck import CKF, CKK, CKM, CKR
from ..core.mechanisms import Kind, Mechanism, Start
from ..core.operations import KeyUse
from ..core.params import MechanismArgs
from ..errors import PKCS11Error
from ..kms.specs import RSASSA_PKCS1_V1_5
from .base import Signature, key_use, no_params, rsa_public_key
from .hashes import BY_OID, HASHES, Hash


def digest_info(value: bytes) -> Hash:
    """The hash a DER DigestInfo names. Only the canonical encoding (NULL parameters, nothing
    after it) is accepted: KMS signs exactly that encoding, and KMS signs SHA-256/384/512 only."""
    from asn1crypto import algos  # imported when needed (docs/performance.md)

    try:
        info = algos.DigestInfo.load(value, strict=True)
        oid = info["digest_algorithm"]["algorithm"].dotted
        digest = info["digest"].native
    except ValueError:
        raise PKCS11Error(CKR.DATA_INVALID, "not a DER DigestInfo") from None
    h = BY_OID.get(oid)
    if h is None or len(digest) != h.size or value != canonical_digest_info(h, digest):
        raise PKCS11Error(CKR.DATA_INVALID, "not the DigestInfo of a known hash")
    if not h.kms_signs:
        raise PKCS11Error(CKR.DATA_INVALID, f"KMS cannot sign {h.name} digests")
    return h


def canonical_digest_info(h: Hash, digest: bytes) -> bytes:
    from asn1crypto import algos, core

    algorithm = algos.DigestAlgorithm({"algorithm": h.oid, "parameters": core.Null()})
    return algos.DigestInfo({"digest_algorithm": algorithm, "digest": digest}).dump()


class RsaPkcs(Signature):
    """CKM_RSA_PKCS: the caller gives the DigestInfo."""

    def to_kms(self, value: bytes) -> tuple[bytes, str]:
        if len(value) > self.use.key.spec.signature_bytes - 11:
            raise PKCS11Error(CKR.DATA_LEN_RANGE, f"{len(value)} bytes")
        h = digest_info(value)
        return value[-h.size:], h.kms_algorithm(RSASSA_PKCS1_V1_5)

    def verify_locally(self, value: bytes, signature: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric import padding

        recovered = rsa_public_key(self.use).recover_data_from_signature(signature, padding.PKCS1v15(), None)
        if recovered != value:
            raise ValueError("DigestInfo differs")


class ShaRsaPkcs(Signature):
    """CKM_SHA256_RSA_PKCS & co.: hashed here, signed by KMS as a digest."""

    def __init__(self, use: KeyUse, hash_: Hash) -> None:
        super().__init__(use, hash_)
        self.hash = hash_

    def to_kms(self, value: bytes) -> tuple[bytes, str]:
        return value, self.hash.kms_algorithm(RSASSA_PKCS1_V1_5)

    def verify_locally(self, value: bytes, signature: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric import padding, utils

        rsa_public_key(self.use).verify(signature, value, padding.PKCS1v15(),
                                    utils.Prehashed(self.hash.crypto()))


def _start_raw(kind: Kind, use: KeyUse | None, args: MechanismArgs) -> RsaPkcs:
    no_params(args)
    return RsaPkcs(key_use(use), None)


def _hashing(hash_mechanism: CKM) -> Start:
    def start(kind: Kind, use: KeyUse | None, args: MechanismArgs) -> ShaRsaPkcs:
        no_params(args)
        return ShaRsaPkcs(key_use(use), HASHES[hash_mechanism])

    return start


FLAGS = CKF.SIGN | CKF.VERIFY
MECHANISMS = (
    Mechanism(CKM.SHA256_RSA_PKCS, CKK.RSA, FLAGS, "SIGN_VERIFY", _hashing(CKM.SHA256)),
    Mechanism(CKM.SHA384_RSA_PKCS, CKK.RSA, FLAGS, "SIGN_VERIFY", _hashing(CKM.SHA384)),
    Mechanism(CKM.SHA512_RSA_PKCS, CKK.RSA, FLAGS, "SIGN_VERIFY", _hashing(CKM.SHA512)),
    Mechanism(CKM.RSA_PKCS, CKK.RSA, FLAGS, "SIGN_VERIFY", _start_raw),
)
