"""Token objects: the private key, public key and certificate objects made from KMS keys and PEM files."""

from __future__ import annotations

import hashlib
import itertools
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..ck import CK_UNAVAILABLE_INFORMATION, CKA, CKC, CKK, CKO
from . import mechanisms
from .attributes import pack, unpack_ulong
from .keyspecs import KEY_SPECS, KEY_USAGES, KeySpec

if TYPE_CHECKING:
    from asn1crypto import x509

# Attributes a key has but never reveals (CKR_ATTRIBUTE_SENSITIVE).
SECRET_ATTRIBUTES = {
    CKK.RSA: frozenset(
        {CKA.PRIVATE_EXPONENT, CKA.PRIME_1, CKA.PRIME_2, CKA.EXPONENT_1, CKA.EXPONENT_2, CKA.COEFFICIENT}
    ),
    CKK.EC: frozenset({CKA.VALUE}),
    CKK.EC_EDWARDS: frozenset({CKA.VALUE}),
    CKK.ML_DSA: frozenset({CKA.VALUE}),
    CKK.GENERIC_SECRET: frozenset({CKA.VALUE}),
}

_handles: dict[tuple, int] = {}
_next_handle = itertools.count(1)
_handles_lock = threading.Lock()


def renew_handle_lock() -> None:
    """After fork, in the child (see core.module)."""
    global _handles_lock
    _handles_lock = threading.Lock()


def handle_for(identity: tuple) -> int:
    """A handle per object identity for the life of the process: never 0, never reused."""
    with _handles_lock:
        if identity not in _handles:
            _handles[identity] = next(_next_handle)
        return _handles[identity]


def new_handle() -> int:
    """A handle for an object that goes away (a session copy): never reused, and not remembered,
    so that copies made on every use (NSS, pkcs11-provider) leave nothing behind."""
    with _handles_lock:
        return next(_next_handle)


@dataclass(frozen=True)
class KmsKey:
    """One KMS key as a token holds it: what GetPublicKey said, plus our label and id."""

    key_id: str
    arn: str
    spec: KeySpec
    usage: str  # KMS KeyUsage
    spki: bytes  # DER SubjectPublicKeyInfo
    label: str
    ckid: bytes  # CKA_ID: the key id's 128 bits


@dataclass
class TokenObject:
    handle: int
    attributes: dict[int, bytes]  # packed values
    sensitive: frozenset[int] = frozenset()
    key: KmsKey | None = None
    certificate: x509.Certificate | None = field(default=None, repr=False)

    @property
    def object_class(self) -> int:
        return unpack_ulong(self.attributes[CKA.CLASS])

    def matches(self, template: list[tuple[int, bytes]]) -> bool:
        return all(self.attributes.get(t) == v for t, v in template)


def key_id_bytes(key_id: str) -> bytes:
    """CKA_ID from a KMS key id: `1234abcd-12ab-...` or a multi-Region `mrk-<32 hex>`."""
    return bytes.fromhex(key_id.removeprefix("mrk-").replace("-", ""))


def _common(cls: CKO, label: str, ckid: bytes) -> dict[int, object]:
    return {
        CKA.CLASS: cls,
        CKA.TOKEN: True,
        CKA.PRIVATE: False,
        CKA.MODIFIABLE: False,
        CKA.COPYABLE: True,  # into session objects: NSS's RSA server and pkcs11-provider copy keys
        CKA.DESTROYABLE: False,
        CKA.LABEL: label,
        CKA.ID: ckid,
    }


# The capabilities each class of key object states, all false unless the key's usage grants them.
_CAPABILITIES = {
    CKO.PRIVATE_KEY: (CKA.DECRYPT, CKA.SIGN, CKA.SIGN_RECOVER, CKA.UNWRAP, CKA.DERIVE),
    CKO.PUBLIC_KEY: (CKA.ENCRYPT, CKA.VERIFY, CKA.VERIFY_RECOVER, CKA.WRAP, CKA.DERIVE),
    CKO.SECRET_KEY: (CKA.ENCRYPT, CKA.DECRYPT, CKA.SIGN, CKA.VERIFY, CKA.WRAP, CKA.UNWRAP,
                     CKA.DERIVE),
}
_NEVER_REVEALED: dict[int, object] = {  # private and secret keys: their material stays in KMS
    CKA.SENSITIVE: True,
    CKA.ALWAYS_SENSITIVE: True,
    CKA.EXTRACTABLE: False,
    CKA.NEVER_EXTRACTABLE: True,
    CKA.WRAP_WITH_TRUSTED: False,
}
_BY_CLASS: dict[CKO, dict[int, object]] = {
    CKO.PRIVATE_KEY: {**_NEVER_REVEALED, CKA.ALWAYS_AUTHENTICATE: False},
    CKO.PUBLIC_KEY: {CKA.TRUSTED: False},
    CKO.SECRET_KEY: {**_NEVER_REVEALED, CKA.TRUSTED: False},
}


def key_objects(identity: tuple, key: KmsKey, subject: bytes = b"") -> list[TokenObject]:
    """The key objects of one KMS key (docs/design.md, "Objects"): a private and a public key, or
    one secret key (HMAC)."""
    from .spki import public_parts  # asn1crypto: only once keys are read (docs/performance.md)

    shared: dict[int, object] = {
        CKA.KEY_TYPE: key.spec.key_type,
        CKA.START_DATE: None,
        CKA.END_DATE: None,
        CKA.LOCAL: True,
        CKA.KEY_GEN_MECHANISM: CK_UNAVAILABLE_INFORMATION,
        CKA.ALLOWED_MECHANISMS: mechanisms.allowed_for(key.spec, key.usage),
        **public_parts(key.spec, key.spki),
    }
    if key.spki:
        shared |= {CKA.SUBJECT: subject, CKA.PUBLIC_KEY_INFO: key.spki}
    objects = []
    for cls, granted in KEY_USAGES[key.usage].objects.items():
        own = shared
        if cls != CKO.PUBLIC_KEY and key.spec.key_type == CKK.ML_DSA:  # its CKA_VALUE is secret
            own = {t: v for t, v in shared.items() if t != CKA.VALUE}
        attrs: dict[int, object] = {
            **_common(cls, key.label, key.ckid),
            **own,
            **{int(c): c in granted for c in _CAPABILITIES[cls]},
            **_BY_CLASS[cls],
        }
        secret = SECRET_ATTRIBUTES[key.spec.key_type] if cls != CKO.PUBLIC_KEY else frozenset()
        handle = handle_for(identity + (key.key_id, cls))
        objects.append(TokenObject(handle, _packed(attrs), secret, key))
    return objects


def certificate_object(
    identity: tuple, cert: x509.Certificate, label: str, ckid: bytes, category: int
) -> TokenObject:
    value = cert.dump()
    validity = cert["tbs_certificate"]["validity"]
    attrs: dict[int, object] = {
        **_common(CKO.CERTIFICATE, label, ckid),
        CKA.CERTIFICATE_TYPE: CKC.X_509,
        CKA.TRUSTED: False,
        CKA.CERTIFICATE_CATEGORY: category,
        CKA.CHECK_VALUE: hashlib.sha1(value).digest()[:3],
        CKA.START_DATE: validity["not_before"].native.date(),
        CKA.END_DATE: validity["not_after"].native.date(),
        CKA.PUBLIC_KEY_INFO: cert.public_key.dump(),
        CKA.SUBJECT: cert.subject.dump(),
        CKA.ISSUER: cert.issuer.dump(),
        CKA.SERIAL_NUMBER: cert["tbs_certificate"]["serial_number"].dump(),
        CKA.VALUE: value,
        CKA.URL: "",
        CKA.HASH_OF_SUBJECT_PUBLIC_KEY: b"",
        CKA.HASH_OF_ISSUER_PUBLIC_KEY: b"",
        CKA.JAVA_MIDP_SECURITY_DOMAIN: 0,
    }
    digest = hashlib.sha256(value).hexdigest()
    return TokenObject(handle_for(identity + ("cert", digest)), _packed(attrs), certificate=cert)


def _packed(attrs: dict[int, object]) -> dict[int, bytes]:
    return {int(t): pack(t, v) for t, v in attrs.items()}


def spec_of(name: str) -> KeySpec | None:
    return KEY_SPECS.get(name)
