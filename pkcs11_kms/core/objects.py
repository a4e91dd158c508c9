"""Token objects: the private key, public key and certificate objects made from KMS keys and PEM files."""

from __future__ import annotations

import hashlib
import itertools
import threading
from dataclasses import dataclass, field

from asn1crypto import core, keys, x509

from ..ck import CK_UNAVAILABLE_INFORMATION, CKA, CKC, CKK, CKO
from . import mechanisms
from .attributes import pack, unpack_ulong
from .keyspecs import KEY_SPECS, KEY_USAGES, KeySpec

# Attributes a private key has but never reveals (CKR_ATTRIBUTE_SENSITIVE).
SECRET_ATTRIBUTES = {
    CKK.RSA: frozenset(
        {CKA.PRIVATE_EXPONENT, CKA.PRIME_1, CKA.PRIME_2, CKA.EXPONENT_1, CKA.EXPONENT_2, CKA.COEFFICIENT}
    ),
    CKK.EC: frozenset({CKA.VALUE}),
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


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def public_parts(spec: KeySpec, spki: bytes) -> dict[int, object]:
    info = keys.PublicKeyInfo.load(spki)
    if spec.key_type == CKK.RSA:
        rsa = info["public_key"].parsed
        return {
            CKA.MODULUS: _int_bytes(rsa["modulus"].native),
            CKA.PUBLIC_EXPONENT: _int_bytes(rsa["public_exponent"].native),
            CKA.MODULUS_BITS: spec.bits,
        }
    params = keys.ECDomainParameters(name="named", value=spec.curve)
    return {
        CKA.EC_PARAMS: params.dump(),
        CKA.EC_POINT: core.OctetString(bytes(info["public_key"])).dump(),
    }


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


def key_objects(identity: tuple, key: KmsKey, subject: bytes = b"") -> list[TokenObject]:
    """The private and public key objects of one KMS key (docs/design.md, "Objects")."""
    private_use, public_use = KEY_USAGES[key.usage]
    allowed = mechanisms.allowed_for(key.spec, key.usage)
    shared: dict[int, object] = {
        CKA.KEY_TYPE: key.spec.key_type,
        CKA.START_DATE: None,
        CKA.END_DATE: None,
        CKA.DERIVE: False,
        CKA.LOCAL: True,
        CKA.KEY_GEN_MECHANISM: CK_UNAVAILABLE_INFORMATION,
        CKA.ALLOWED_MECHANISMS: allowed,
        CKA.SUBJECT: subject,
        CKA.PUBLIC_KEY_INFO: key.spki,
        **public_parts(key.spec, key.spki),
    }
    private: dict[int, object] = {
        **_common(CKO.PRIVATE_KEY, key.label, key.ckid),
        **shared,
        CKA.SENSITIVE: True,
        CKA.ALWAYS_SENSITIVE: True,
        CKA.EXTRACTABLE: False,
        CKA.NEVER_EXTRACTABLE: True,
        CKA.DECRYPT: private_use == CKA.DECRYPT,
        CKA.SIGN: private_use == CKA.SIGN,
        CKA.SIGN_RECOVER: False,
        CKA.UNWRAP: False,
        CKA.WRAP_WITH_TRUSTED: False,
        CKA.ALWAYS_AUTHENTICATE: False,
    }
    public: dict[int, object] = {
        **_common(CKO.PUBLIC_KEY, key.label, key.ckid),
        **shared,
        CKA.ENCRYPT: public_use == CKA.ENCRYPT,
        CKA.VERIFY: public_use == CKA.VERIFY,
        CKA.VERIFY_RECOVER: False,
        CKA.WRAP: False,
        CKA.TRUSTED: False,
    }
    return [
        TokenObject(
            handle_for(identity + (key.key_id, CKO.PRIVATE_KEY)),
            _packed(private),
            SECRET_ATTRIBUTES[key.spec.key_type],
            key,
        ),
        TokenObject(handle_for(identity + (key.key_id, CKO.PUBLIC_KEY)), _packed(public), key=key),
    ]


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
