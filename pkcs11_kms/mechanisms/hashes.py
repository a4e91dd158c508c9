"""Hash algorithms as PKCS#11, KMS and the DigestInfo encoding name them: one table.

Digest lengths are hashlib's; the KMS algorithm names are kms/specs.py's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from ..ck import CKG, CKM
from ..kms.specs import SIGNING_HASHES, algorithm_name

if TYPE_CHECKING:
    from cryptography.hazmat.primitives import hashes


@dataclass(frozen=True)
class Hash:
    mechanism: CKM  # CKM_SHA256 ...
    mgf: CKG  # the MGF1 that goes with it
    name: str  # hashlib's name
    kms: str | None  # KMS's name (SHA_256 ...); None: no KMS algorithm uses it
    oid: str  # DigestInfo algorithm

    @cached_property
    def size(self) -> int:
        """Digest bytes."""
        return self.new().digest_size

    @property
    def kms_signs(self) -> bool:
        """KMS signs digests of this hash."""
        return self.kms in SIGNING_HASHES

    def kms_algorithm(self, scheme: str) -> str:
        """KMS's name of `scheme` over this hash (RSASSA_PSS_SHA_256 ...)."""
        assert self.kms is not None
        return algorithm_name(scheme, self.kms)

    def new(self) -> hashlib._Hash:
        return hashlib.new(self.name)

    def crypto(self) -> hashes.HashAlgorithm:
        from cryptography.hazmat.primitives import hashes  # when needed (docs/performance.md)

        algorithm: type[hashes.HashAlgorithm] = getattr(hashes, self.name.upper())  # SHA256 ...
        return algorithm()


HASHES: dict[int, Hash] = {
    h.mechanism: h
    for h in (
        Hash(CKM.SHA_1, CKG.MGF1_SHA1, "sha1", "SHA_1", "1.3.14.3.2.26"),
        Hash(CKM.SHA224, CKG.MGF1_SHA224, "sha224", None, "2.16.840.1.101.3.4.2.4"),
        Hash(CKM.SHA256, CKG.MGF1_SHA256, "sha256", "SHA_256", "2.16.840.1.101.3.4.2.1"),
        Hash(CKM.SHA384, CKG.MGF1_SHA384, "sha384", "SHA_384", "2.16.840.1.101.3.4.2.2"),
        Hash(CKM.SHA512, CKG.MGF1_SHA512, "sha512", "SHA_512", "2.16.840.1.101.3.4.2.3"),
    )
}

BY_SIZE: dict[int, Hash] = {h.size: h for h in HASHES.values()}
BY_OID: dict[str, Hash] = {h.oid: h for h in HASHES.values()}
