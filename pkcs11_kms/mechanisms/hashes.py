"""Hash algorithms as PKCS#11, KMS and the DigestInfo encoding name them: one table."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes

from ..ck import CKG, CKM


@dataclass(frozen=True)
class Hash:
    mechanism: CKM  # CKM_SHA256 ...
    mgf: CKG  # the MGF1 that goes with it
    name: str  # hashlib's name
    size: int  # digest bytes
    kms: str | None  # KMS's suffix (SHA_256 ...); None: KMS cannot sign with it
    oid: str  # DigestInfo algorithm

    def new(self):  # type: ignore[no-untyped-def]
        return hashlib.new(self.name)

    def crypto(self) -> hashes.HashAlgorithm:
        return {
            "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256,
            "sha384": hashes.SHA384, "sha512": hashes.SHA512,
        }[self.name]()


HASHES: dict[int, Hash] = {
    h.mechanism: h
    for h in (
        Hash(CKM.SHA_1, CKG.MGF1_SHA1, "sha1", 20, None, "1.3.14.3.2.26"),
        Hash(CKM.SHA224, CKG.MGF1_SHA224, "sha224", 28, None, "2.16.840.1.101.3.4.2.4"),
        Hash(CKM.SHA256, CKG.MGF1_SHA256, "sha256", 32, "SHA_256", "2.16.840.1.101.3.4.2.1"),
        Hash(CKM.SHA384, CKG.MGF1_SHA384, "sha384", 48, "SHA_384", "2.16.840.1.101.3.4.2.2"),
        Hash(CKM.SHA512, CKG.MGF1_SHA512, "sha512", 64, "SHA_512", "2.16.840.1.101.3.4.2.3"),
    )
}

BY_SIZE: dict[int, Hash] = {h.size: h for h in HASHES.values()}
BY_OID: dict[str, Hash] = {h.oid: h for h in HASHES.values()}
