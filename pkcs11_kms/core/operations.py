"""Cryptographic operations in a session (PKCS#11 §5.9-5.12): init, single-part, update, final.

One generic state machine for sign, verify, encrypt and decrypt. The mechanism families
(pkcs11_kms/mechanisms/) make the operation objects; this module only keeps their state by the
spec's rules: one active operation per kind, CKR_BUFFER_TOO_SMALL and length queries keep it (and
its computed result, so KMS is not called twice), every other error ends it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeVar

from ..ck import CKA, CKF, CKO, CKR
from ..errors import PKCS11Error
from ..kms.backend import KmsBackend
from ..trust import wipe
from . import mechanisms
from .access import find_object
from .keyspecs import KEY_USAGES
from .kms_errors import calling_kms
from .mechanisms import Kind
from .objects import KmsKey, TokenObject
from .params import MechanismArgs
from .session import Session, session

T = TypeVar("T")


class KeyRule(NamedTuple):
    """What a kind of operation needs of a mechanism and of its key object."""

    flag: int  # the mechanism flag (CKF_SIGN, ...)
    capability: CKA  # what the key object must be able to do (keyspecs.KEY_USAGES grants it)


# Signatures and ciphertexts have the length output_length() says: a buffer shorter than that gets
# CKR_BUFFER_TOO_SMALL before KMS is called. A decryption's bound is only an upper bound.
EXACT_LENGTH = (Kind.SIGN, Kind.ENCRYPT)
KEY_RULES: dict[Kind, KeyRule] = {
    Kind.SIGN: KeyRule(CKF.SIGN, CKA.SIGN),
    Kind.VERIFY: KeyRule(CKF.VERIFY, CKA.VERIFY),
    Kind.ENCRYPT: KeyRule(CKF.ENCRYPT, CKA.ENCRYPT),
    Kind.DECRYPT: KeyRule(CKF.DECRYPT, CKA.DECRYPT),
    Kind.DERIVE: KeyRule(CKF.DERIVE, CKA.DERIVE),
}


def may(obj: TokenObject, capability: CKA) -> bool:
    """Whether a key object can do what `capability` names. Private key objects carry the public
    key, so they verify and encrypt too."""
    assert obj.key is not None
    objects = KEY_USAGES[obj.key.usage].objects
    if capability in objects.get(CKO(obj.object_class), ()):
        return True
    return obj.object_class == CKO.PRIVATE_KEY and capability in objects.get(CKO.PUBLIC_KEY, ())


@dataclass(frozen=True)
class KeyUse:
    """What an operation needs of its key: the key, its KMS backend, where public-key math runs."""

    key: KmsKey
    backend: KmsBackend
    kms_public_operations: bool

    @property
    def key_ref(self) -> str:
        return self.key.arn or self.key.key_id


class Operation(Protocol):
    def output_length(self, data_length: int) -> int: ...  # an upper bound, without calling KMS
    def update(self, data: bytes) -> None: ...
    def finish(self) -> bytes | bytearray: ...  # the output; called once. A secret: bytearray
    def verify(self, signature: bytes) -> None: ...  # verify: raises CKR_SIGNATURE_*


@dataclass
class Active:
    operation: Operation
    result: bytes | bytearray | None = None  # computed, not yet delivered (CKR_BUFFER_TOO_SMALL)
    multipart: bool = False
    data: bytes | None = None  # what a single-part result was computed from

    def __del__(self) -> None:  # ended undelivered: cancelled, failed, its session closed
        wipe(self.result)  # docs/security.md, "Secrets in memory"


@dataclass(frozen=True)
class Output:
    """What a producing call returns: the length, and the bytes unless the caller only asked for
    the length or gave too small a buffer."""

    length: int
    data: bytes | bytearray | None  # a bytearray: wiped by the caller once delivered


def digest_init(session_handle: int, args: MechanismArgs | None) -> None:
    """C_DigestInit: no key; the hashing happens here (Java asks for digests before PSS)."""
    s = session(session_handle)
    if args is None:
        s.operations.pop(Kind.DIGEST, None)
        return
    if Kind.DIGEST in s.operations:
        raise PKCS11Error(CKR.OPERATION_ACTIVE, "a digest operation is active")
    mechanism = mechanisms.lookup(args.mechanism)
    if mechanism.key_type is not None or mechanism.start is None \
            or not mechanism.flags & CKF.DIGEST:
        raise PKCS11Error(CKR.MECHANISM_INVALID, f"{mechanism.mechanism.name} is not a digest")
    s.operations[Kind.DIGEST] = Active(mechanism.start(Kind.DIGEST, None, args))


def digest_key(session_handle: int, key_handle: int) -> None:
    """C_DigestKey: only secret keys can be digested, and KMS private key material never leaves."""
    s = session(session_handle)
    _active(s, Kind.DIGEST)
    _guarded(s, Kind.DIGEST, lambda: key_object(s, key_handle))
    del s.operations[Kind.DIGEST]
    raise PKCS11Error(CKR.KEY_INDIGESTIBLE, "KMS keys cannot be digested")


def end(kind: Kind, session_handle: int) -> None:
    """Ends the operation after a call failed before it reached the core (a NULL length pointer,
    unreadable input): §5.2, only CKR_BUFFER_TOO_SMALL and length queries keep it."""
    try:
        session(session_handle).operations.pop(kind, None)
    except PKCS11Error:
        pass


def init(kind: Kind, session_handle: int, args: MechanismArgs | None, key_handle: int) -> None:
    """C_SignInit & co. `args` None cancels the active operation (pkcs11-provider relies on it)."""
    s = session(session_handle)
    if args is None:
        s.operations.pop(kind, None)
        return
    if kind in s.operations:
        raise PKCS11Error(CKR.OPERATION_ACTIVE, f"a {kind} operation is active")
    mechanism = mechanisms.lookup(args.mechanism)
    if mechanism.key_type is None:
        raise PKCS11Error(CKR.MECHANISM_INVALID, f"{mechanism.mechanism.name} takes no key")
    if mechanism.start is None or not mechanism.flags & KEY_RULES[kind].flag:
        raise PKCS11Error(CKR.MECHANISM_INVALID, f"{mechanism.mechanism.name} cannot {kind}")
    key = _usable_key(s, kind, key_handle)
    if mechanism.key_type != key.spec.key_type:
        raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, f"{mechanism.mechanism.name} on {key.spec.name}")
    if not mechanisms.applies(mechanism, key.spec, key.usage):
        raise PKCS11Error(CKR.KEY_FUNCTION_NOT_PERMITTED, f"{mechanism.mechanism.name} on {key.usage}")
    config = s.token.config
    use = KeyUse(key, s.token.backend, config.public_key_operations == "kms")
    s.operations[kind] = Active(mechanism.start(kind, use, args))


def key_object(s: Session, handle: int) -> TokenObject:
    """The key a handle names; any other handle is CKR_KEY_HANDLE_INVALID, never
    CKR_OBJECT_HANDLE_INVALID (§5.8.1, §5.12.4: the key functions' return values)."""
    try:
        obj = find_object(s.handle, handle)
    except PKCS11Error:
        raise PKCS11Error(CKR.KEY_HANDLE_INVALID, f"no key {handle}") from None
    if obj.key is None:
        raise PKCS11Error(CKR.KEY_HANDLE_INVALID, f"object {handle} is not a key")
    return obj


def _usable_key(s: Session, kind: Kind, handle: int) -> KmsKey:
    obj = key_object(s, handle)
    assert obj.key is not None
    if not may(obj, KEY_RULES[kind].capability):
        raise PKCS11Error(CKR.KEY_FUNCTION_NOT_PERMITTED, f"key {handle} cannot {kind}")
    return obj.key


def _active(s: Session, kind: Kind) -> Active:
    active = s.operations.get(kind)
    if active is None:
        raise PKCS11Error(CKR.OPERATION_NOT_INITIALIZED, f"no {kind} operation")
    return active


def _deliver(s: Session, kind: Kind, active: Active, capacity: int | None) -> Output:
    assert active.result is not None
    if capacity is None or capacity < len(active.result):
        return Output(len(active.result), None)
    del s.operations[kind]
    result, active.result = active.result, None  # the caller delivers it, then wipes it
    return Output(len(result), result)


def single(kind: Kind, session_handle: int, data: bytes, capacity: int | None) -> Output:
    """C_Sign, C_Encrypt, C_Decrypt. capacity None: the caller asks for the length only."""
    s = session(session_handle)
    active = _active(s, kind)
    if active.result is None:
        if active.multipart:
            del s.operations[kind]
            raise PKCS11Error(CKR.OPERATION_ACTIVE, f"a multi-part {kind} is in progress")
        length = _guarded(s, kind, lambda: active.operation.output_length(len(data)))
        if capacity is None or (kind in EXACT_LENGTH and capacity < length):
            return Output(length, None)
        active.result = _guarded(s, kind, lambda: _run(active.operation, data))
        active.data = data
    elif data != active.data:  # the retry after CKR_BUFFER_TOO_SMALL must repeat the call
        del s.operations[kind]
        raise PKCS11Error(CKR.ARGUMENTS_BAD, f"{kind} retried with other data than it was given")
    return _deliver(s, kind, active, capacity)


def _run(operation: Operation, data: bytes) -> bytes | bytearray:
    operation.update(data)
    return operation.finish()


def update(kind: Kind, session_handle: int, data: bytes) -> None:
    s = session(session_handle)
    active = _active(s, kind)
    if active.result is not None:
        raise PKCS11Error(CKR.OPERATION_ACTIVE, f"the {kind} result waits to be collected")
    active.multipart = True
    _guarded(s, kind, lambda: active.operation.update(data))


def final(kind: Kind, session_handle: int, capacity: int | None) -> Output:
    s = session(session_handle)
    active = _active(s, kind)
    if active.result is None:
        length = _guarded(s, kind, lambda: active.operation.output_length(0))
        if capacity is None or (kind in EXACT_LENGTH and capacity < length):
            return Output(length, None)
        active.result = _guarded(s, kind, active.operation.finish)
    return _deliver(s, kind, active, capacity)


def verify(session_handle: int, data: bytes | None, signature: bytes) -> None:
    """C_Verify (data given) and C_VerifyFinal (data None): the operation ends either way."""
    s = session(session_handle)
    active = _active(s, Kind.VERIFY)
    del s.operations[Kind.VERIFY]
    if data is not None:
        if active.multipart:
            raise PKCS11Error(CKR.OPERATION_ACTIVE, "a multi-part verify is in progress")
        active.operation.update(data)
    with calling_kms():
        active.operation.verify(signature)


def _guarded(s: Session, kind: Kind, step: Callable[[], T]) -> T:
    """Runs one step; any error but CKR_BUFFER_TOO_SMALL ends the operation (§5.2)."""
    try:
        with calling_kms():
            return step()
    except PKCS11Error as e:
        if e.rv != CKR.BUFFER_TOO_SMALL:
            s.operations.pop(kind, None)
        raise
    except Exception:
        s.operations.pop(kind, None)
        raise
