"""moto's KMS backend and responses, with AWS KMS's asymmetric operations, key states and usages.

Kept from moto (5.2.5): the key store, aliases, tags, grants, policies, ListKeys, DescribeKey and
symmetric ciphertext. Replaced: CreateKey's key specs and key material (HMAC keys of the spec's
length), Sign, Verify, RSA Encrypt/Decrypt (real RSAES-OAEP), GenerateMac, VerifyMac,
GetPublicKey, GenerateRandom; key-state and key-usage checks and DryRun on Sign, Verify, Encrypt,
Decrypt, GenerateDataKey*, GenerateMac and VerifyMac. Added: DeriveSharedSecret (ECDH), and
key_material() for the test-only material hook (server.KEY_MATERIAL_PATH). ReEncrypt and
GenerateDataKey* stay symmetric-only, as in KMS.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any, cast

from cryptography.exceptions import UnsupportedAlgorithm
from moto.core.base_backend import BackendDict
from moto.core.exceptions import JsonRESTError
from moto.kms import models as moto_models
from moto.kms.models import Key, KmsBackend
from moto.kms.responses import KmsResponse

from . import crypto
from .specs import (
    ENCRYPTION_ALGORITHMS,
    HMAC_KEY_SPECS,
    KEY_AGREEMENT_ALGORITHMS,
    KEY_SPECS,
    MAC_ALGORITHMS,
    MAX_CIPHERTEXT,
    MAX_MAC,
    MAX_MESSAGE,
    MAX_PUBLIC_KEY,
    MAX_SIGNATURE,
    MESSAGE_TYPES,
    RAW,
    SIGNING_ALGORITHMS,
    SYMMETRIC_SPECS,
    UNSUPPORTED_ENCRYPTION_ALGORITHMS,
    UNSUPPORTED_KEY_SPECS,
    UNSUPPORTED_SIGNING_ALGORITHMS,
    KeySpec,
)

MOTO_VERSION = "5.2.5"  # the moto these overrides are written against (pyproject pins it)
SYMMETRIC = "SYMMETRIC_DEFAULT"
_ALL_SIGNING = [*SIGNING_ALGORITHMS, *UNSUPPORTED_SIGNING_ALGORITHMS]
_ALL_ENCRYPTION = [SYMMETRIC, *ENCRYPTION_ALGORITHMS, *UNSUPPORTED_ENCRYPTION_ALGORITHMS]


class KmsError(JsonRESTError):
    """An AWS KMS error response: HTTP 400 with {"__type": code, "message": ...}."""

    code = 400

    def __init__(self, error_type: str, message: str = "") -> None:
        super().__init__(error_type, message)


def _validation(message: str) -> KmsError:
    return KmsError("ValidationException", message)


def _constraint(field: str, rule: str, value: Any = None) -> KmsError:
    shown = "" if value is None else f" '{value}'"
    return _validation(f"1 validation error detected: Value{shown} at '{field}' failed to satisfy "
                       f"constraint: Member must {rule}")


def _enum(field: str, value: str, allowed: list[str]) -> None:
    if value not in allowed:
        raise _constraint(field, f"satisfy enum value set: [{', '.join(allowed)}]", value)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class EmulatorKey(Key):
    """A moto Key whose key pair and algorithm lists come from specs.KEY_SPECS."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # moto types it as always a key; symmetric keys have none
        self.private_key = crypto.generate(self.spec) if self.spec else None  # type: ignore[assignment]
        if self.key_spec in HMAC_KEY_SPECS:  # moto's is always 32 bytes; KMS's is the spec's size
            self.key_material = os.urandom(HMAC_KEY_SPECS[self.key_spec][1])

    @property
    def spec(self) -> KeySpec | None:
        return KEY_SPECS.get(self.key_spec)

    @property
    def encryption_algorithms(self) -> list[str] | None:
        if self.key_usage != "ENCRYPT_DECRYPT":
            return None
        return list(self.spec.encryption) if self.spec else [SYMMETRIC]

    @property
    def signing_algorithms(self) -> list[str] | None:  # type: ignore[override]
        if self.key_usage != "SIGN_VERIFY" or not self.spec:
            return None
        return list(self.spec.signing)

    @property
    def mac_algorithms(self) -> list[str] | None:
        if self.key_usage != "GENERATE_VERIFY_MAC" or self.key_spec not in HMAC_KEY_SPECS:
            return None
        return [HMAC_KEY_SPECS[self.key_spec][0]]

    def algorithm_fields(self) -> dict[str, list[str]]:
        """The algorithm lists DescribeKey and GetPublicKey show for this key's usage."""
        fields = {
            "EncryptionAlgorithms": self.encryption_algorithms,
            "SigningAlgorithms": self.signing_algorithms,
            "KeyAgreementAlgorithms": (list(self.spec.key_agreement) if self.spec
                                       and self.key_usage == "KEY_AGREEMENT" else None),
            "MacAlgorithms": self.mac_algorithms,
        }
        return {name: value for name, value in fields.items() if value}

    def to_dict(self) -> dict[str, Any]:
        result = super().to_dict()
        metadata = {k: v for k, v in result["KeyMetadata"].items()
                    if v is not None and not k.endswith("Algorithms")}
        metadata.update(self.algorithm_fields())
        return {"KeyMetadata": metadata}


class EmulatorKmsBackend(KmsBackend):
    """moto's KmsBackend creating EmulatorKeys for every key spec in the tables."""

    def create_key(self, policy: str | None, key_usage: str, key_spec: str, description: str,
                   tags: list[dict[str, str]] | None, multi_region: bool = False,
                   origin: str = "AWS_KMS") -> Key:
        key_spec, key_usage = key_spec or SYMMETRIC, key_usage or "ENCRYPT_DECRYPT"
        if key_spec in UNSUPPORTED_KEY_SPECS:
            raise KmsError("UnsupportedOperationException",
                           f"KeySpec {key_spec} is not supported in this region.")
        _enum("keySpec", key_spec, [*KEY_SPECS, *SYMMETRIC_SPECS, *UNSUPPORTED_KEY_SPECS])
        _enum("keyUsage", key_usage,
              ["SIGN_VERIFY", "ENCRYPT_DECRYPT", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT"])
        spec = KEY_SPECS.get(key_spec)
        usages = spec.usages if spec else (SYMMETRIC_SPECS[key_spec],)
        if key_usage not in usages:
            raise _validation(f"KeyUsage {key_usage} is not compatible with KeySpec {key_spec}; "
                              f"use one of {', '.join(usages)}.")
        try:
            # moto declares CloudFormation hooks abstract on Key and instantiates it all the same
            key = EmulatorKey(  # type: ignore[abstract]
                policy, key_usage, key_spec, description, self.account_id, self.region_name,
                multi_region, origin)
        except UnsupportedAlgorithm as exc:
            raise KmsError("UnsupportedOperationException", f"{key_spec}: {exc}") from exc
        self.keys[key.id] = key
        if tags:
            self.tagger.tag_resource(key.id, tags)
        return key


    def describe_key(self, key_id: str) -> EmulatorKey:
        return cast(EmulatorKey, super().describe_key(key_id))  # create_key makes only these


kms_backends = BackendDict(EmulatorKmsBackend, "kms")


def _no_key_pair(key_spec: str) -> Any:
    return None


def install() -> None:
    """Stop moto from generating its own (unused) RSA/EC key pair inside every Key."""
    moto_models.generate_private_key = _no_key_pair


class EmulatorKmsResponse(KmsResponse):
    """moto's KmsResponse with KMS's Sign, Verify, Encrypt, Decrypt, GetPublicKey and checks."""

    @property
    def kms_backend(self) -> EmulatorKmsBackend:
        return kms_backends[self.current_account][self.region]

    # -- shared checks, in KMS's order: syntax, key exists, key state, key usage, DryRun --

    def _blob(self, name: str, limit: int) -> bytes:
        """A required blob parameter, 1..limit bytes."""
        value = self._get_param(name)  # moto base64-decodes Message, Plaintext, CiphertextBlob
        if isinstance(value, str):
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise _validation(f"{name} is not valid base64.") from None
        field = name[0].lower() + name[1:]
        if value is None:
            raise _constraint(field, "not be null")
        if len(value) < 1:
            raise _constraint(field, "have length greater than or equal to 1")
        if len(value) > limit:
            raise _constraint(field, f"have length less than or equal to {limit}")
        return value

    def _key(self) -> EmulatorKey:
        key_id = self._get_param("KeyId")
        if not key_id:
            raise _constraint("keyId", "not be null")
        self._validate_key_id(key_id)  # NotFoundException
        key = self.kms_backend.describe_key(key_id)
        self._state(key)
        return key

    @staticmethod
    def _state(key: EmulatorKey) -> None:
        if key.key_state == "Disabled":
            raise KmsError("DisabledException", f"{key.arn} is disabled.")
        if key.key_state != "Enabled":
            verb = "pending deletion" if key.key_state == "PendingDeletion" else key.key_state
            raise KmsError("KMSInvalidStateException", f"{key.arn} is {verb}.")

    @staticmethod
    def _usage(key: EmulatorKey, usage: str, operation: str) -> None:
        if key.key_usage != usage:
            raise KmsError("InvalidKeyUsageException", f"{key.arn} key usage is {key.key_usage} "
                           f"which is not valid for {operation}.")

    @staticmethod
    def _algorithm(key: EmulatorKey, algorithm: str, allowed: list[str] | None) -> None:
        if algorithm not in (allowed or []):
            raise KmsError("InvalidKeyUsageException",
                           f"Algorithm {algorithm} is incompatible with key spec {key.key_spec}.")

    def _dry_run(self) -> None:
        if self._get_param("DryRun"):
            raise KmsError("DryRunOperationException",
                           "The request would have succeeded, but the DryRun option is set.")

    # -- Sign / Verify --

    def _signing_request(self, operation: str) -> tuple[EmulatorKey, bytes, str, str]:
        message = self._blob("Message", MAX_MESSAGE)
        message_type = self._get_param("MessageType") or RAW
        algorithm = self._get_param("SigningAlgorithm")
        if algorithm is None:
            raise _constraint("signingAlgorithm", "not be null")
        _enum("signingAlgorithm", algorithm, _ALL_SIGNING)
        _enum("messageType", message_type, list(MESSAGE_TYPES))
        key = self._key()
        self._usage(key, "SIGN_VERIFY", operation)
        self._algorithm(key, algorithm, key.signing_algorithms)
        accepted = SIGNING_ALGORITHMS[algorithm].message_types
        if message_type not in accepted:
            raise _validation(f"MessageType {message_type} is not supported with signing "
                              f"algorithm {algorithm}; use {' or '.join(accepted)}.")
        length = accepted[message_type]
        if length is not None and len(message) != length:
            raise _validation(f"Digest is invalid length for algorithm {algorithm}." if
                              message_type != "EXTERNAL_MU" else
                              f"EXTERNAL_MU message must be {length} bytes long.")
        return key, message, message_type, algorithm

    def sign(self) -> str:
        key, message, message_type, algorithm = self._signing_request("Sign")
        self._dry_run()
        signature = crypto.sign(key.private_key, algorithm, message_type, message)
        return json.dumps({"KeyId": key.arn, "Signature": _b64(signature),
                           "SigningAlgorithm": algorithm})

    def verify(self) -> str:
        signature = self._blob("Signature", MAX_SIGNATURE)
        key, message, message_type, algorithm = self._signing_request("Verify")
        self._dry_run()
        if not crypto.verify(key.private_key, algorithm, message_type, message, signature):
            raise KmsError("KMSInvalidSignatureException")
        return json.dumps({"KeyId": key.arn, "SignatureValid": True,
                           "SigningAlgorithm": algorithm})

    # -- Encrypt / Decrypt --

    def _encryption_request(self, operation: str) -> tuple[EmulatorKey, str]:
        algorithm = self._get_param("EncryptionAlgorithm") or SYMMETRIC
        _enum("encryptionAlgorithm", algorithm, _ALL_ENCRYPTION)
        key = self._key()
        self._usage(key, "ENCRYPT_DECRYPT", operation)
        self._algorithm(key, algorithm, key.encryption_algorithms)
        if key.spec and self._get_param("EncryptionContext"):
            raise _validation("EncryptionContext is not supported with asymmetric KMS keys.")
        return key, algorithm

    def encrypt(self) -> str:
        plaintext = self._blob("Plaintext", MAX_MESSAGE)
        key, algorithm = self._encryption_request("Encrypt")
        if key.spec:
            limit = key.spec.oaep_limits[algorithm]
            if len(plaintext) > limit:
                raise _validation(f"Plaintext of {len(plaintext)} bytes is too long for "
                                  f"{algorithm} with {key.key_spec}: at most {limit} bytes.")
            self._dry_run()
            blob = crypto.oaep_encrypt(key.private_key, algorithm, plaintext)
        else:
            self._dry_run()
            blob, _ = self.kms_backend.encrypt(key.id, plaintext,
                                               self._get_param("EncryptionContext", {}))
        return json.dumps({"CiphertextBlob": _b64(blob), "KeyId": key.arn,
                           "EncryptionAlgorithm": algorithm})

    def _symmetric_decrypt(self, blob: bytes) -> tuple[bytes, str]:
        try:
            return self.kms_backend.decrypt(blob, self._get_param("EncryptionContext", {}))
        except JsonRESTError as exc:  # moto: AccessDenied for an unknown key in the blob
            raise KmsError("InvalidCiphertextException") from exc

    def decrypt(self) -> str:
        blob = self._blob("CiphertextBlob", MAX_CIPHERTEXT)
        if not self._get_param("KeyId"):  # only symmetric ciphertext names its key
            algorithm = self._get_param("EncryptionAlgorithm") or SYMMETRIC
            _enum("encryptionAlgorithm", algorithm, _ALL_ENCRYPTION)
            if algorithm != SYMMETRIC:
                raise _validation(f"KeyId is required to decrypt with {algorithm}.")
            plaintext, arn = self._symmetric_decrypt(blob)
            key = self.kms_backend.describe_key(arn)
            self._state(key)
            self._dry_run()
        else:
            key, algorithm = self._encryption_request("Decrypt")
            self._dry_run()
            if key.spec:
                opened = crypto.oaep_decrypt(key.private_key, algorithm, blob)
                if opened is None:
                    raise KmsError("InvalidCiphertextException")
                plaintext = opened
            else:
                plaintext, arn = self._symmetric_decrypt(blob)
                if arn != key.arn:
                    raise KmsError("IncorrectKeyException", "The key ID in the request does not "
                                   "identify a KMS key that can perform this operation.")
        return json.dumps({"Plaintext": _b64(plaintext), "KeyId": key.arn,
                           "EncryptionAlgorithm": algorithm})

    # -- symmetric-only operations moto serves: add the key checks KMS makes first --

    def generate_data_key(self) -> str:
        key = self._key()
        self._usage(key, "ENCRYPT_DECRYPT", "GenerateDataKey")
        self._algorithm(key, SYMMETRIC, key.encryption_algorithms)
        self._dry_run()
        return super().generate_data_key()

    def re_encrypt(self) -> str:
        destination = self._get_param("DestinationKeyId")
        if destination:
            self._validate_key_id(destination)
            key = self.kms_backend.describe_key(destination)
            self._algorithm(key, self._get_param("DestinationEncryptionAlgorithm") or SYMMETRIC,
                            key.encryption_algorithms)
        return super().re_encrypt()

    # -- GenerateMac / VerifyMac (moto's skip the length, algorithm and state checks) --

    def _mac_request(self, operation: str) -> tuple[EmulatorKey, bytes, str]:
        message = self._blob("Message", MAX_MESSAGE)
        algorithm = self._get_param("MacAlgorithm")
        if algorithm is None:
            raise _constraint("macAlgorithm", "not be null")
        _enum("macAlgorithm", algorithm, list(MAC_ALGORITHMS))
        key = self._key()
        self._usage(key, "GENERATE_VERIFY_MAC", operation)
        self._algorithm(key, algorithm, key.mac_algorithms)
        return key, message, algorithm

    def generate_mac(self) -> str:
        key, message, algorithm = self._mac_request("GenerateMac")
        self._dry_run()
        tag = crypto.mac(key.key_material, algorithm, message)
        return json.dumps({"Mac": _b64(tag), "MacAlgorithm": algorithm, "KeyId": key.arn})

    def verify_mac(self) -> str:
        tag = self._blob("Mac", MAX_MAC)
        key, message, algorithm = self._mac_request("VerifyMac")
        self._dry_run()
        if not crypto.mac_matches(key.key_material, algorithm, message, tag):
            raise KmsError("KMSInvalidMacException")
        return json.dumps({"KeyId": key.arn, "MacValid": True, "MacAlgorithm": algorithm})

    # -- DeriveSharedSecret (ECDH with a KEY_AGREEMENT key; moto 5.2.5 has no such operation) --

    def derive_shared_secret(self) -> str:
        algorithm = self._get_param("KeyAgreementAlgorithm")
        if algorithm is None:
            raise _constraint("keyAgreementAlgorithm", "not be null")
        _enum("keyAgreementAlgorithm", algorithm, list(KEY_AGREEMENT_ALGORITHMS))
        peer = self._blob("PublicKey", MAX_PUBLIC_KEY)
        recipient = self._get_param("Recipient")
        key = self._key()
        self._usage(key, "KEY_AGREEMENT", "DeriveSharedSecret")
        assert key.spec is not None  # CreateKey allows KEY_AGREEMENT only with an EC key spec
        self._algorithm(key, algorithm, list(key.spec.key_agreement))
        if recipient is not None:
            # KMS verifies the Nitro attestation document against the AWS Nitro root; nothing
            # outside an enclave can produce one, and the emulator verifies none.
            raise _validation("Recipient is not supported: the KMS emulator cannot verify an "
                              "attestation document.")
        try:
            secret = crypto.ecdh(key.private_key, peer)
        except ValueError as exc:
            raise _validation(f"PublicKey is not a valid {key.key_spec} public key: "
                              f"{exc}.") from None
        self._dry_run()
        return json.dumps({"KeyId": key.arn, "SharedSecret": _b64(secret),
                           "KeyAgreementAlgorithm": algorithm, "KeyOrigin": key.origin})

    # -- GetPublicKey / GenerateRandom --

    def get_public_key(self) -> str:
        key = self._key()
        if not key.spec:
            raise KmsError("UnsupportedOperationException",
                           f"{key.arn} is a {key.key_spec} key, which has no public key.")
        return json.dumps({
            "KeyId": key.arn, "PublicKey": _b64(crypto.public_key_der(key.private_key)),
            "CustomerMasterKeySpec": key.key_spec, "KeySpec": key.key_spec,
            "KeyUsage": key.key_usage, **key.algorithm_fields(),
        })

    def generate_random(self) -> str:
        count = self._get_param("NumberOfBytes")
        if self._get_param("CustomKeyStoreId"):
            raise KmsError("CustomKeyStoreNotFoundException", "No such custom key store.")
        if count is None:
            raise _validation("NumberOfBytes is required.")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1024:
            raise _constraint("numberOfBytes", "have value between 1 and 1024", count)
        return json.dumps({"Plaintext": _b64(os.urandom(count))})


# -- the test-only material hook (server.KEY_MATERIAL_PATH); never part of the KMS API --

def key_material(key_id: str) -> dict[str, str] | None:
    """A key's secret material for tests that check KMS's output independently, or None.

    ``Format`` RAW: the secret key bytes (HMAC, SYMMETRIC_DEFAULT); PKCS8: the unencrypted DER
    private key of an asymmetric key. Looks in every account and region the emulator has served."""
    for account in list(kms_backends.values()):
        for backend in list(account.values()):
            key = backend.keys.get(key_id)
            if key is None:
                continue
            key = cast(EmulatorKey, key)
            if key.private_key is not None:
                fmt, material = "PKCS8", crypto.private_key_der(key.private_key)
            else:
                fmt, material = "RAW", key.key_material
            return {"KeyId": key.arn, "KeySpec": key.key_spec, "KeyUsage": key.key_usage,
                    "Format": fmt, "KeyMaterial": _b64(material)}
    return None
