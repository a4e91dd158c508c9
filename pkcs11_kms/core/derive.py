"""C_DeriveKey (PKCS#11 §5.18.5): a new session secret key from a KMS key (ECDH).

The derived key is a session object of its session (gone when it closes, or C_DestroyObject),
CKO_SECRET_KEY of the template's key type (CKK_GENERIC_SECRET unless it says another). Consumers
derive to read the value: pkcs11-provider asks for CKA_SENSITIVE false and CKA_EXTRACTABLE true,
libp11 says neither and reads CKA_VALUE all the same, so those are the defaults; a template that
makes the key sensitive or unextractable keeps its value in the module (CKR_ATTRIBUTE_SENSITIVE).
The module itself does nothing more with it (docs/design.md, "Derived keys").
"""

from __future__ import annotations

from ..ck import CKA, CKF, CKK, CKO, CKR
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
    if _ulong(template, CKA.CLASS) not in (None, CKO.SECRET_KEY):
        raise PKCS11Error(CKR.TEMPLATE_INCONSISTENT, "a derived key is a secret key")
    if _flag(template, CKA.TOKEN):
        raise PKCS11Error(CKR.TEMPLATE_INCONSISTENT, "derived keys are session objects")
    private = _flag(template, CKA.PRIVATE)
    if private and not s.token.logged_in:
        raise PKCS11Error(CKR.USER_NOT_LOGGED_IN, "a private object needs C_Login")
    length = _ulong(template, CKA.VALUE_LEN)
    if length == 0:
        raise PKCS11Error(CKR.ATTRIBUTE_VALUE_INVALID, "CKA_VALUE_LEN 0")
    use = KeyUse(base.key, s.token.backend, False)
    with calling_kms():
        value = mechanism.derive(use, args, length)
    key_type = _ulong(template, CKA.KEY_TYPE)
    sensitive, extractable = _flag(template, CKA.SENSITIVE), _flag(template, CKA.EXTRACTABLE)
    attributes: dict[int, bytes] = {
        **{int(a): pack(a, _flag(template, a)) for a in _BOOLEANS},
        int(CKA.CLASS): pack(CKA.CLASS, CKO.SECRET_KEY),
        int(CKA.KEY_TYPE): pack(CKA.KEY_TYPE, CKK.GENERIC_SECRET if key_type is None else key_type),
        int(CKA.VALUE_LEN): pack(CKA.VALUE_LEN, len(value)),
        int(CKA.VALUE): value,
        int(CKA.LABEL): template.get(CKA.LABEL, b""),
        int(CKA.ID): template.get(CKA.ID, b""),
        int(CKA.START_DATE): template.get(CKA.START_DATE, b""),
        int(CKA.END_DATE): template.get(CKA.END_DATE, b""),
        int(CKA.LOCAL): pack(CKA.LOCAL, False),
        int(CKA.KEY_GEN_MECHANISM): pack(CKA.KEY_GEN_MECHANISM, mechanism.mechanism),
        int(CKA.ALWAYS_SENSITIVE): pack(CKA.ALWAYS_SENSITIVE, sensitive),
        int(CKA.NEVER_EXTRACTABLE): pack(CKA.NEVER_EXTRACTABLE, not extractable),
    }
    hidden = frozenset({int(CKA.VALUE)}) if sensitive or not extractable else frozenset()
    derived = TokenObject(new_handle(), attributes, hidden)
    with module().lock:
        s.token.session_objects[derived.handle] = (s.handle, derived)
    return derived.handle
