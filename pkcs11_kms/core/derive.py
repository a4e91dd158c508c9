"""C_DeriveKey (PKCS#11 §5.18.5): a new session secret key from a KMS key (ECDH).

The derived key is a session object of its session (gone when it closes, or C_DestroyObject),
CKO_SECRET_KEY of the template's key type (CKK_GENERIC_SECRET unless it says another). Consumers
derive to read the value: pkcs11-provider asks for CKA_SENSITIVE false and CKA_EXTRACTABLE true,
libp11 says neither and reads CKA_VALUE all the same, so those are the defaults; a template that
makes the key sensitive or unextractable keeps its value in the module (CKR_ATTRIBUTE_SENSITIVE).
The module itself does nothing more with it (docs/design.md, "Derived keys").
"""

from __future__ import annotations

from ..ck import CK_UNAVAILABLE_INFORMATION, CKA, CKF, CKK, CKO, CKR
from ..errors import PKCS11Error
from . import mechanisms
from .attributes import pack, unpack_ulong
from .kms_errors import calling_kms
from .module import module
from .objects import TokenObject, new_handle
from .operations import KeyUse, key_object, may
from .params import MechanismArgs
from .session import session

# What a derivation template may say, and each attribute's default.
_BOOLEANS = {
    CKA.TOKEN: False, CKA.PRIVATE: False, CKA.MODIFIABLE: False, CKA.COPYABLE: False,
    CKA.DESTROYABLE: True, CKA.SENSITIVE: False, CKA.EXTRACTABLE: True, CKA.ENCRYPT: False,
    CKA.DECRYPT: False, CKA.SIGN: False, CKA.VERIFY: False, CKA.WRAP: False, CKA.UNWRAP: False,
    CKA.DERIVE: False, CKA.TRUSTED: False, CKA.WRAP_WITH_TRUSTED: False,
}
_OTHERS = {CKA.CLASS, CKA.KEY_TYPE, CKA.VALUE_LEN, CKA.LABEL, CKA.ID, CKA.START_DATE,
           CKA.END_DATE}
# Key types a derived secret may be, and the lengths each allows (None: any)
KEY_TYPES: dict[int, frozenset[int] | None] = {
    CKK.GENERIC_SECRET: None, CKK.AES: frozenset({16, 24, 32}),
    CKK.SHA224_HMAC: None, CKK.SHA256_HMAC: None, CKK.SHA384_HMAC: None, CKK.SHA512_HMAC: None,
}
MAX_VALUE_LEN = 1024  # bytes a KDF gives: far beyond any key's


def _flag(template: dict[int, bytes], attribute: CKA) -> bool:
    value = template.get(attribute)
    if value is None:
        return _BOOLEANS[attribute]
    if value not in (pack(attribute, False), pack(attribute, True)):
        raise PKCS11Error(CKR.ATTRIBUTE_VALUE_INVALID, f"{attribute.name} is a CK_BBOOL")
    return value == pack(attribute, True)


def _ulong(template: dict[int, bytes], attribute: CKA) -> int | None:
    value = template.get(attribute)
    if value is None:
        return None
    try:
        return unpack_ulong(value)
    except ValueError:
        raise PKCS11Error(CKR.ATTRIBUTE_VALUE_INVALID, f"{attribute.name} is a CK_ULONG") from None


def derive_key(session_handle: int, args: MechanismArgs, base_handle: int,
               items: list[tuple[int, bytes]]) -> int:
    s = session(session_handle)
    mechanism = mechanisms.lookup(args.mechanism)
    if mechanism.derive is None or not mechanism.flags & CKF.DERIVE:
        raise PKCS11Error(CKR.MECHANISM_INVALID, f"{mechanism.mechanism.name} derives no key")
    base = key_object(s, base_handle)
    assert base.key is not None
    if mechanism.key_type != base.key.spec.key_type or not may(base, CKA.DERIVE) \
            or not mechanisms.applies(mechanism, base.key.spec, base.key.usage):
        raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, f"key {base_handle} cannot derive with "
                          f"{mechanism.mechanism.name}")
    template = dict(items)
    unknown = set(template) - set(_BOOLEANS) - _OTHERS
    if unknown:
        raise PKCS11Error(CKR.ATTRIBUTE_TYPE_INVALID, f"attribute {min(unknown):#x}")
    flags = {a: _flag(template, a) for a in _BOOLEANS}  # every value checked before KMS is asked
    if _ulong(template, CKA.CLASS) not in (None, CKO.SECRET_KEY):
        raise PKCS11Error(CKR.TEMPLATE_INCONSISTENT, "a derived key is a secret key")
    if flags[CKA.TOKEN]:
        raise PKCS11Error(CKR.TEMPLATE_INCONSISTENT, "derived keys are session objects")
    if flags[CKA.TRUSTED]:
        raise PKCS11Error(CKR.ATTRIBUTE_READ_ONLY, "only the security officer sets CKA_TRUSTED")
    if flags[CKA.PRIVATE] and not s.token.logged_in:
        raise PKCS11Error(CKR.USER_NOT_LOGGED_IN, "a private object needs C_Login")
    key_type = _ulong(template, CKA.KEY_TYPE)
    key_type = CKK.GENERIC_SECRET if key_type is None else key_type
    if key_type not in KEY_TYPES:
        raise PKCS11Error(CKR.TEMPLATE_INCONSISTENT, f"key type {key_type:#x} for a derived key")
    length = _ulong(template, CKA.VALUE_LEN)
    lengths = KEY_TYPES[key_type]
    if length is None and lengths is not None:
        raise PKCS11Error(CKR.TEMPLATE_INCOMPLETE, f"key type {key_type:#x} needs CKA_VALUE_LEN")
    if length is not None and (not 0 < length <= MAX_VALUE_LEN
                               or lengths is not None and length not in lengths):
        raise PKCS11Error(CKR.TEMPLATE_INCONSISTENT, f"CKA_VALUE_LEN {length} for key type "
                          f"{key_type:#x}")
    use = KeyUse(base.key, s.token.backend, False)
    with calling_kms():
        value = mechanism.derive(use, args, length)
    sensitive, extractable = flags[CKA.SENSITIVE], flags[CKA.EXTRACTABLE]
    attributes: dict[int, bytes] = {
        **{int(a): pack(a, v) for a, v in flags.items()},
        int(CKA.CLASS): pack(CKA.CLASS, CKO.SECRET_KEY),
        int(CKA.KEY_TYPE): pack(CKA.KEY_TYPE, key_type),
        int(CKA.VALUE_LEN): pack(CKA.VALUE_LEN, len(value)),
        int(CKA.VALUE): value,
        int(CKA.LABEL): template.get(CKA.LABEL, b""),
        int(CKA.ID): template.get(CKA.ID, b""),
        int(CKA.START_DATE): template.get(CKA.START_DATE, b""),
        int(CKA.END_DATE): template.get(CKA.END_DATE, b""),
        int(CKA.LOCAL): pack(CKA.LOCAL, False),
        int(CKA.KEY_GEN_MECHANISM): pack(CKA.KEY_GEN_MECHANISM, CK_UNAVAILABLE_INFORMATION),
        int(CKA.ALWAYS_SENSITIVE): pack(CKA.ALWAYS_SENSITIVE, sensitive),
        int(CKA.NEVER_EXTRACTABLE): pack(CKA.NEVER_EXTRACTABLE, not extractable),
    }
    hidden = frozenset({int(CKA.VALUE)}) if sensitive or not extractable else frozenset()
    derived = TokenObject(new_handle(), attributes, hidden)
    m = module()
    with m.lock:
        if m.sessions.get(s.handle) is not s:  # closed while KMS answered: nobody may own it
            raise PKCS11Error(CKR.SESSION_CLOSED, f"session {s.handle} closed meanwhile")
        s.token.session_objects[derived.handle] = (s.handle, derived)
    return derived.handle
