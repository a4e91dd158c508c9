"""FakeKms: an in-memory KmsBackend with real keys, AWS KMS rules and error codes, for tests."""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from .backend import Alias, KeyMetadata, KmsBackend, PublicKey
from .errors import KmsError, failure

REGION = "eu-west-1"
ACCOUNT = "111122223333"

_RSA_SIGNING = tuple(
    f"RSASSA_{scheme}_SHA_{bits}" for scheme in ("PKCS1_V1_5", "PSS") for bits in (256, 384, 512)
)
_RSA_ENCRYPTION = ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256")
_CURVES: dict[str, tuple[type[ec.EllipticCurve], str]] = {
    "ECC_NIST_P256": (ec.SECP256R1, "ECDSA_SHA_256"),
    "ECC_NIST_P384": (ec.SECP384R1, "ECDSA_SHA_384"),
    "ECC_NIST_P521": (ec.SECP521R1, "ECDSA_SHA_512"),
    "ECC_SECG_P256K1": (ec.SECP256K1, "ECDSA_SHA_256"),  # KMS fixes one hash per curve
}
_RSA_BITS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}
_USAGES = {  # key spec family -> usages the fake supports
    "RSA": ("SIGN_VERIFY", "ENCRYPT_DECRYPT"),
    "ECC": ("SIGN_VERIFY",),
    "SYMMETRIC_DEFAULT": ("ENCRYPT_DECRYPT",),
}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA_1": hashes.SHA1,
    "SHA_256": hashes.SHA256,
    "SHA_384": hashes.SHA384,
    "SHA_512": hashes.SHA512,
}
# The names KMS's API accepts at all: another name is a ValidationException, not a key mismatch.
_SIGNING_NAMES = frozenset(_RSA_SIGNING) | {
    "ECDSA_SHA_256", "ECDSA_SHA_384", "ECDSA_SHA_512", "ED25519_SHA_512", "ED25519_PH_SHA_512",
    "ML_DSA_SHAKE_256", "SM2DSA",
}  # fmt: skip
_ENCRYPTION_NAMES = frozenset(_RSA_ENCRYPTION) | {"SYMMETRIC_DEFAULT", "SM2PKE"}
MAX_RAW_MESSAGE = 4096  # bytes KMS takes with MessageType=RAW
MAX_RANDOM = 1024  # bytes per GenerateRandom

_material_cache: dict[str, Any] = {}  # key spec -> private key, with reuse_key_material=True


def _hash_of(algorithm: str) -> hashes.HashAlgorithm:
    return _HASHES[algorithm[algorithm.rindex("SHA_") :]]()


@dataclass
class _Key:
    meta: KeyMetadata
    private: Any  # an RSA or EC private key; None for SYMMETRIC_DEFAULT
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def signing_algorithms(self) -> tuple[str, ...]:
        if self.meta.key_usage != "SIGN_VERIFY":
            return ()
        if self.meta.key_spec in _CURVES:
            return (_CURVES[self.meta.key_spec][1],)
        return _RSA_SIGNING

    @property
    def encryption_algorithms(self) -> tuple[str, ...]:
        if self.meta.key_usage != "ENCRYPT_DECRYPT":
            return ()
        return ("SYMMETRIC_DEFAULT",) if self.private is None else _RSA_ENCRYPTION


class FakeKms(KmsBackend):
    """KMS semantics without a network: DIGEST must be the hash length, RAW at most 4096 bytes,
    PSS salt = hash length, ECDSA DER, OAEP SHA-1/SHA-256 with an empty label.

    For tests: `calls` logs every (operation, key) asked, `fail_next` injects a KMS error,
    `latency` delays every call (outside any lock, like a network would).
    """

    def __init__(self, region: str = REGION, reuse_key_material: bool = False) -> None:
        self.region = region
        self.reuse_key_material = reuse_key_material  # faster RSA-4096 keys; same key per spec
        self.latency = 0.0
        self.calls: list[tuple[str, str | None]] = []
        self._keys: dict[str, _Key] = {}
        self._aliases: dict[str, str] = {}  # alias/name -> key id
        self._faults: list[tuple[str, str | None, str, str]] = []  # operation, key, code, message
        self._lock = threading.Lock()

    # -- seeding ------------------------------------------------------------------------------

    def create_key(
        self,
        key_spec: str,
        key_usage: str,
        alias: str | None = None,
        tags: dict[str, str] | None = None,
        state: str = "Enabled",
        description: str = "",
    ) -> KeyMetadata:
        family = "RSA" if key_spec in _RSA_BITS else "ECC" if key_spec in _CURVES else key_spec
        if key_usage not in _USAGES.get(family, ()):
            why = f"{key_spec} keys cannot be {key_usage}"
            raise KmsError("ValidationException", "CreateKey", None, None, why)
        key_id = str(uuid.uuid4())
        arn = self._arn(f"key/{key_id}")
        meta = KeyMetadata(key_id, arn, key_spec, key_usage, state, description)
        with self._lock:
            self._keys[key_id] = _Key(meta, self._material(key_spec), dict(tags or {}))
        if alias:
            self.create_alias(alias, key_id)
        return meta

    def create_alias(self, alias: str, key: str) -> None:
        name = alias if alias.startswith("alias/") else f"alias/{alias}"
        key_id = self._find("CreateAlias", key).meta.key_id
        with self._lock:
            if name in self._aliases:
                raise KmsError("AlreadyExistsException", "CreateAlias", name)
            self._aliases[name] = key_id

    def set_key_state(self, key: str, state: str) -> None:
        """Enabled, Disabled, PendingDeletion, PendingImport, Unavailable ..."""
        found = self._find("SetKeyState", key)
        found.meta = replace(found.meta, key_state=state)

    def delete_key(self, key: str) -> None:
        """Gone at once (KMS waits 7 days): every later call names a key that does not exist."""
        key_id = self._find("DeleteKey", key).meta.key_id
        with self._lock:
            del self._keys[key_id]
            for name in [n for n, target in self._aliases.items() if target == key_id]:
                del self._aliases[name]

    def fail_next(
        self, operation: str, code: str, key: str | None = None, times: int = 1, message: str = ""
    ) -> None:
        """The next `times` calls of `operation` (on `key`, if given) fail with KMS error `code`."""
        with self._lock:
            self._faults.extend([(operation, key, code, message)] * times)

    def calls_of(self, operation: str) -> list[str | None]:
        return [key for op, key in self.calls if op == operation]

    # -- KmsBackend -----------------------------------------------------------------------------

    def describe_key(self, key: str) -> KeyMetadata:
        return self._begin("DescribeKey", key).meta

    def get_public_key(self, key: str) -> PublicKey:
        found = self._usable(self._begin("GetPublicKey", key), "GetPublicKey", key)
        if found.private is None:
            raise self._fail("UnsupportedOperationException", "GetPublicKey", key, "symmetric key")
        der = found.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return PublicKey(
            key_id=found.meta.key_id,
            arn=found.meta.arn,
            der=der,
            key_spec=found.meta.key_spec,
            key_usage=found.meta.key_usage,
            signing_algorithms=found.signing_algorithms,
            encryption_algorithms=found.encryption_algorithms,
        )

    def list_keys(self) -> list[str]:
        self._begin("ListKeys", None)
        with self._lock:
            return list(self._keys)

    def list_aliases(self) -> list[Alias]:
        self._begin("ListAliases", None)
        with self._lock:
            return [Alias(n, self._arn(n), target) for n, target in self._aliases.items()]

    def list_resource_tags(self, key_id: str) -> dict[str, str]:
        if key_id.startswith("alias/") or ":alias/" in key_id:  # KMS takes key id or ARN only
            self._begin("ListResourceTags", key_id, resolve=False)
            raise self._fail("NotFoundException", "ListResourceTags", key_id, "not a key id")
        return dict(self._begin("ListResourceTags", key_id).tags)

    def sign(self, key: str, message: bytes, message_type: str, algorithm: str) -> bytes:
        found = self._for_algorithm("Sign", key, "SIGN_VERIFY", algorithm)
        digest, hash_ = self._digest("Sign", key, message, message_type, algorithm)
        if isinstance(found.private, ec.EllipticCurvePrivateKey):
            return found.private.sign(digest, ec.ECDSA(utils.Prehashed(hash_)))
        return found.private.sign(digest, _rsa_padding(algorithm, hash_), utils.Prehashed(hash_))

    def verify(
        self, key: str, message: bytes, message_type: str, signature: bytes, algorithm: str
    ) -> bool:
        found = self._for_algorithm("Verify", key, "SIGN_VERIFY", algorithm)
        digest, hash_ = self._digest("Verify", key, message, message_type, algorithm)
        public = found.private.public_key()
        try:
            if isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signature, digest, ec.ECDSA(utils.Prehashed(hash_)))
            else:
                rsa_padding = _rsa_padding(algorithm, hash_)
                public.verify(signature, digest, rsa_padding, utils.Prehashed(hash_))
        except (InvalidSignature, ValueError):
            return False  # KMS: KMSInvalidSignatureException, which the backend turns into False
        return True

    def encrypt(self, key: str, plaintext: bytes, algorithm: str) -> bytes:
        found = self._for_algorithm("Encrypt", key, "ENCRYPT_DECRYPT", algorithm)
        oaep = _oaep(algorithm)
        limit = found.private.key_size // 8 - 2 * oaep.algorithm.digest_size - 2
        if not 1 <= len(plaintext) <= limit:
            raise self._fail("ValidationException", "Encrypt", key, f"plaintext must be 1..{limit}")
        return found.private.public_key().encrypt(plaintext, oaep)

    def decrypt(self, key: str, ciphertext: bytes, algorithm: str) -> bytes:
        found = self._for_algorithm("Decrypt", key, "ENCRYPT_DECRYPT", algorithm)
        try:
            return found.private.decrypt(ciphertext, _oaep(algorithm))
        except ValueError:
            raise self._fail("InvalidCiphertextException", "Decrypt", key) from None

    def generate_random(self, length: int) -> bytes:
        self._begin("GenerateRandom", None)
        if not 1 <= length <= MAX_RANDOM:
            raise self._fail("ValidationException", "GenerateRandom", None, f"1..{MAX_RANDOM}")
        return os.urandom(length)

    def dry_run_sign(self, key: str, algorithm: str) -> bool:
        self._for_algorithm("Sign", key, "SIGN_VERIFY", algorithm)
        return True

    def dry_run_decrypt(self, key: str, algorithm: str) -> bool:
        self._for_algorithm("Decrypt", key, "ENCRYPT_DECRYPT", algorithm)
        return True

    # -- KMS's checks, in KMS's order: exists, state, usage, algorithm, data ----------------

    def _begin(self, operation: str, key: str | None, resolve: bool = True) -> _Key:
        """Log the call, wait the latency, fire an injected fault, find the key."""
        with self._lock:
            self.calls.append((operation, key))
            fault = next(
                (f for f in self._faults if f[0] == operation and f[1] in (None, key)), None
            )
            if fault:
                self._faults.remove(fault)
        if self.latency:
            time.sleep(self.latency)
        if fault:
            raise self._fail(fault[2], operation, key, fault[3])
        if not resolve or key is None:
            return None  # type: ignore[return-value]
        return self._find(operation, key)

    def _usable(self, found: _Key, operation: str, key: str) -> _Key:
        state = found.meta.key_state
        if state == "Disabled":
            raise self._fail("DisabledException", operation, key, f"{found.meta.arn} is disabled.")
        if state != "Enabled":
            why = f"{found.meta.arn} is {state}."
            raise self._fail("KMSInvalidStateException", operation, key, why)
        return found

    def _for_algorithm(self, operation: str, key: str, usage: str, algorithm: str) -> _Key:
        found = self._begin(operation, key)
        signing = usage == "SIGN_VERIFY"
        if algorithm not in (_SIGNING_NAMES if signing else _ENCRYPTION_NAMES):
            why = f"Value '{algorithm}' is not a valid algorithm"
            raise self._fail("ValidationException", operation, key, why)
        self._usable(found, operation, key)
        if found.meta.key_usage != usage:
            why = f"{found.meta.arn} key usage is {found.meta.key_usage}"
            raise self._fail("InvalidKeyUsageException", operation, key, why)
        allowed = found.signing_algorithms if signing else found.encryption_algorithms
        if algorithm not in allowed:
            why = f"algorithm {algorithm} is not valid for {found.meta.key_spec}"
            raise self._fail("InvalidKeyUsageException", operation, key, why)
        if algorithm == "SYMMETRIC_DEFAULT":
            raise self._fail("UnsupportedOperationException", operation, key, "fake: no symmetric")
        return found

    def _digest(
        self, operation: str, key: str, message: bytes, message_type: str, algorithm: str
    ) -> tuple[bytes, hashes.HashAlgorithm]:
        hash_ = _hash_of(algorithm)
        if message_type == "DIGEST":
            if len(message) != hash_.digest_size:
                why = f"Digest is invalid length for algorithm {algorithm}."
                raise self._fail("ValidationException", operation, key, why)
            return bytes(message), hash_
        if message_type == "RAW":
            if not 1 <= len(message) <= MAX_RAW_MESSAGE:
                why = f"Message must be 1..{MAX_RAW_MESSAGE} bytes"
                raise self._fail("ValidationException", operation, key, why)
            hasher = hashes.Hash(hash_)
            hasher.update(message)
            return hasher.finalize(), hash_
        raise self._fail("ValidationException", operation, key, f"MessageType {message_type!r}")

    # -- identifiers and material ---------------------------------------------------------------

    def _arn(self, resource: str) -> str:
        return f"arn:aws:kms:{self.region}:{ACCOUNT}:{resource}"

    def _find(self, operation: str, key: str) -> _Key:
        """Key id, key ARN, alias name or alias ARN -> the key, as KMS resolves them."""
        prefix = self._arn("")
        resource = key[len(prefix) :] if key.startswith(prefix) else None
        with self._lock:
            if key.startswith("alias/") or (resource or "").startswith("alias/"):
                name = resource or key
                found = self._keys.get(self._aliases.get(name, ""))
            elif resource is None or resource.startswith("key/"):
                name = resource[4:] if resource else key
                found = self._keys.get(name)
            else:
                name, found = key, None
        if found is None:
            what = f"Alias {self._arn(name)}" if name.startswith("alias/") else f"Key '{key}'"
            raise self._fail("NotFoundException", operation, key, f"{what} does not exist")
        return found

    def _material(self, key_spec: str) -> Any:
        if key_spec in _RSA_BITS:
            make = lambda: rsa.generate_private_key(65537, _RSA_BITS[key_spec])  # noqa: E731
        elif key_spec in _CURVES:
            make = lambda: ec.generate_private_key(_CURVES[key_spec][0]())  # noqa: E731
        else:
            return None
        if not self.reuse_key_material:
            return make()
        if key_spec not in _material_cache:
            _material_cache[key_spec] = make()
        return _material_cache[key_spec]

    @staticmethod
    def _fail(code: str, operation: str, key: str | None, message: str = "") -> KmsError:
        return failure(code, operation, key, str(uuid.uuid4()), message)


def _rsa_padding(algorithm: str, hash_: hashes.HashAlgorithm) -> padding.AsymmetricPadding:
    if algorithm.startswith("RSASSA_PSS_"):
        return padding.PSS(mgf=padding.MGF1(hash_), salt_length=hash_.digest_size)
    return padding.PKCS1v15()


def _oaep(algorithm: str) -> padding.OAEP:
    hash_ = _hash_of(algorithm)
    return padding.OAEP(mgf=padding.MGF1(hash_), algorithm=hash_, label=None)
