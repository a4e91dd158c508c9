"""A PKCS#11 client on python-pkcs11: find a private key by RFC 7512 URI in any module, and sign.

The subcommands that sign (`tsa`) go through a PKCS#11 module exactly as openssl or pkcs11-tool
would: C_Initialize, find the key, C_SignInit/C_Sign. With this package's module the signature is
made by KMS; any other module (an HSM, p11-kit's proxy) works too.

Where python-pkcs11 falls short of what the CLI needs:
- it calls C_Initialize(NULL): no pReserved, so a config file reaches this package's module as
  $PKCS11_KMS_CONFIG instead; and NULL promises a module one calling thread at a time, so signing
  through any other module is serialised here;
- it has no CKA_PUBLIC_KEY_INFO: the client's attribute mapper reads it as bytes;
- a session opened with a PIN logs out when it closes, which would end the login of every other
  session: the sessions that found the key stay open (and logged in) until `close`, and each
  signature is made in a session of its own, opened without a PIN.
"""

from __future__ import annotations

import os
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, cast

import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.attributes import AttributeMapper, handle_bytes, handle_str

from .. import module_path
from ..ck import CKA
from ..config import ENV_VAR
from .uri import Pkcs11Uri

_PUBLIC_KEY_INFO = cast(Attribute, CKA.PUBLIC_KEY_INFO)  # not among python-pkcs11's Attribute


def describe(error: pkcs11.PKCS11Error) -> str:
    """python-pkcs11 raises one class per CK_RV, most without a message: the class names it."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _mapper() -> AttributeMapper:
    mapper = AttributeMapper()
    mapper.register_handler(_PUBLIC_KEY_INFO, *handle_bytes)
    # A label that is not UTF-8 is shown, not refused.
    mapper.register_handler(Attribute.LABEL, handle_str[0],
                            lambda raw: raw.decode("utf-8", "replace"))
    return mapper


@dataclass(frozen=True)
class FoundKey:
    token: pkcs11.Token
    key_type: KeyType | None  # None when the module does not say, or says a vendor type
    label: str
    ckid: bytes
    token_label: str
    spki: bytes | None  # CKA_PUBLIC_KEY_INFO when the module offers it
    can_sign: bool  # CKA_SIGN

    def template(self) -> dict[Attribute, Any]:
        return {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: self.label,
                Attribute.ID: self.ckid}


class Pkcs11Module:
    """One loaded module; C_Initialize on open, C_Finalize on close. PKCS11Error from
    python-pkcs11 when the module fails a call (`describe` says which code)."""

    def __init__(self, path: str, config: str | None = None) -> None:
        self.path = path
        if config:
            os.environ[ENV_VAR] = config
        ours = os.path.realpath(path) == os.path.realpath(module_path())
        self._one_at_a_time = nullcontext() if ours else threading.Lock()
        try:
            self._lib = pkcs11.lib(path)
        except pkcs11.PKCS11Error as e:  # dlopen or dlsym failed: python-pkcs11 says so in text
            loading = f"while loading {path}: "
            if type(e) is pkcs11.PKCS11Error and loading in str(e):
                raise OSError(str(e).partition(loading)[2]) from None
            raise
        self._mapper = _mapper()
        self._held: list[pkcs11.Session] = []

    def close(self) -> None:
        self._lib.finalize()  # closes every session, the held ones with their login

    def _open(self, token: pkcs11.Token, pin: str | None = None) -> pkcs11.Session:
        return token.open(user_pin=pin, attribute_mapper=self._mapper)

    def find_key(self, uri: Pkcs11Uri) -> FoundKey:
        """The one private key the URI names; LookupError says why there is not exactly one."""
        if uri.get("type") not in (None, "private"):
            raise LookupError(f"the URI names type={uri.get('type')}: a signing key is "
                              "type=private")
        pin = uri.query.get("pin-value")
        wanted_slot = uri.get("slot-id")
        template: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.PRIVATE_KEY}
        if uri.get("object") is not None:
            template[Attribute.LABEL] = uri.get("object")
        if uri.ckid is not None:
            template[Attribute.ID] = uri.ckid
        matches: list[FoundKey] = []
        for slot in self._lib.get_slots(token_present=True):
            if wanted_slot is not None and str(slot.slot_id) != wanted_slot:
                continue
            token = slot.get_token()
            info = {"token": token.label, "manufacturer": token.manufacturer_id,
                    "model": token.model,
                    "serial": token.serial.decode("utf-8", "replace").rstrip(" \0")}
            if any(uri.get(k) is not None and uri.get(k) != v for k, v in info.items()):
                continue
            session = self._open(token, pin)
            found = [self._found(token, key) for key in session.get_objects(template)]
            if found:
                self._held.append(session)
            else:
                session.close()
            matches += found
        if not matches:
            raise LookupError("no private key matches the URI (`pkcs11-kms keys` lists them)")
        if len(matches) > 1:
            where = ", ".join(f"{m.token_label}/{m.label}" for m in matches)
            raise LookupError(f"{len(matches)} private keys match the URI ({where}): add token= "
                              "or id= to name one")
        return matches[0]

    def _found(self, token: pkcs11.Token, key: pkcs11.Object) -> FoundKey:
        def attribute(kind: Attribute) -> Any:
            try:
                return key[kind]
            except (pkcs11.PKCS11Error, ValueError):  # ValueError: a vendor CKK_ value
                return None

        return FoundKey(token, attribute(Attribute.KEY_TYPE), attribute(Attribute.LABEL) or "",
                        attribute(Attribute.ID) or b"", token.label,
                        attribute(_PUBLIC_KEY_INFO) or None,
                        isinstance(key, pkcs11.SignMixin))

    def sign(self, key: FoundKey, mechanism: pkcs11.Mechanism, data: bytes) -> bytes:
        """One C_SignInit/C_Sign in a session of its own (callers may run in several threads)."""
        with self._one_at_a_time:
            session = self._open(key.token)
            try:
                signers = [found for found in session.get_objects(key.template())
                           if isinstance(found, pkcs11.SignMixin)]
                if not signers:
                    raise pkcs11.NoSuchKey(f"{key.token_label}/{key.label} is gone")
                return signers[0].sign(data, mechanism=mechanism)
            finally:
                session.close()
