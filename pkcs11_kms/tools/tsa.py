"""RFC 3161 time-stamping: TimeStampReq in, TimeStampResp out, the SignedData (RFC 5652) signed by
a Signer (a PKCS#11 key in `pkcs11-kms tsa`). Pure ASN.1 work with asn1crypto; no I/O here."""

from __future__ import annotations

import datetime
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from asn1crypto import algos, cms, core, keys, tsp, x509

from ..kms.specs import KEY_SPECS, hashlib_name

DEFAULT_POLICY = "1.2.3.4.1"  # a placeholder, as in OpenSSL's sample TSA config: set your own
# Message imprints the TSA accepts: name -> digest length. No MD5 or SHA-1: a time-stamp over a
# digest anyone can collide proves little.
IMPRINT_DIGESTS = {name: hashlib.new(name).digest_size for name in (
    "sha224", "sha256", "sha384", "sha512", "sha3_224", "sha3_256", "sha3_384", "sha3_512")}
# ECDSA: the hash KMS fixes per curve (docs/design.md, "Digests per curve"); the TSA signs with
# the same.
CURVE_DIGESTS = {spec.curve: hashlib_name(spec.hash) for spec in KEY_SPECS.values()
                 if spec.curve is not None and spec.hash is not None}
TIME_STAMPING = "time_stamping"


class Rejection(Exception):
    """The query cannot be granted: answered with status rejection and a PKIFailureInfo bit."""

    def __init__(self, failure: str, text: str) -> None:
        super().__init__(text)
        self.failure, self.text = failure, text


@dataclass(frozen=True)
class Signer:
    """What signs: `sign(data, digest_name)` returns the CMS signature value (RSA PKCS#1 v1.5, or
    DER ECDSA-Sig-Value) over `data` hashed with `digest_name`."""

    key_type: str  # "rsa" or "ec"
    digest: str  # sha256 | sha384 | sha512
    sign: Callable[[bytes, str], bytes]


def default_digest(public_key: keys.PublicKeyInfo) -> str:
    if public_key.algorithm == "ec":
        return CURVE_DIGESTS.get(public_key.curve[1], "sha256")
    return "sha256"


def check_certificate(cert: x509.Certificate, now: datetime.datetime | None = None) -> list[str]:
    """What makes RFC 3161 clients (openssl ts -verify) refuse tokens signed under `cert`."""
    problems = []
    eku = cert.extended_key_usage_value
    if eku is None or TIME_STAMPING not in eku.native:
        problems.append("it has no extendedKeyUsage timeStamping")
    elif "extended_key_usage" not in cert.critical_extensions:
        problems.append("its extendedKeyUsage is not critical (RFC 3161 2.3)")
    elif len(eku.native) != 1:
        problems.append("its extendedKeyUsage has other purposes than timeStamping (RFC 3161 2.3)")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    validity = cert["tbs_certificate"]["validity"]
    if not validity["not_before"].native <= now <= validity["not_after"].native:
        problems.append(f"it is not valid now (valid {validity['not_before'].native:%Y-%m-%d} to "
                        f"{validity['not_after'].native:%Y-%m-%d})")
    return problems


def parse_request(der: bytes) -> tsp.TimeStampReq:
    try:
        request = tsp.TimeStampReq.load(der, strict=True)
        request.native  # noqa: B018 - parse everything now: a bad field is badDataFormat
    except (ValueError, TypeError) as e:
        raise Rejection("bad_data_format", f"not a DER TimeStampReq: {e}") from None
    if request["version"].native != "v1":
        raise Rejection("bad_request", "only TimeStampReq version 1 is known")
    return request


@dataclass
class TimeStampAuthority:
    signer: Signer
    certificate: x509.Certificate
    chain: list[x509.Certificate] = field(default_factory=list)
    policy: str = DEFAULT_POLICY
    accuracy_seconds: int = 1
    clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc)

    def respond(self, query: bytes) -> tuple[bytes, str]:
        """(DER TimeStampResp, one line for a log). Signing failures propagate: a reply that is
        not a valid token must never look granted."""
        try:
            request = parse_request(query)
            token, serial = self._token(request)
        except Rejection as r:
            return rejection(r.failure, r.text), f"rejected ({r.failure}): {r.text}"
        response = tsp.TimeStampResp({"status": {"status": "granted"}, "time_stamp_token": token})
        return response.dump(), f"granted serial {serial:x}"

    def _check(self, request: tsp.TimeStampReq) -> None:
        imprint = request["message_imprint"]
        algorithm = imprint["hash_algorithm"]["algorithm"].native
        if IMPRINT_DIGESTS.get(algorithm) is None:
            raise Rejection("bad_alg", f"message imprint algorithm {algorithm} is not accepted "
                            f"(use one of {', '.join(IMPRINT_DIGESTS)})")
        if len(imprint["hashed_message"].native) != IMPRINT_DIGESTS[algorithm]:
            raise Rejection("bad_data_format", f"the {algorithm} imprint has the wrong length")
        asked = request["req_policy"].dotted if request["req_policy"].native else None
        if asked is not None and asked != self.policy:
            raise Rejection("unaccepted_policy", f"policy {asked} is not this TSA's "
                            f"({self.policy})")
        if request["extensions"].native:
            raise Rejection("unaccepted_extensions", "this TSA accepts no request extensions")

    def _token(self, request: tsp.TimeStampReq) -> tuple[cms.ContentInfo, int]:
        self._check(request)
        serial = secrets.randbits(127) | (1 << 126)  # positive, unique, fits 16 octets
        now = self.clock().replace(microsecond=0)
        info: dict[str, object] = {
            "version": "v1",
            "policy": self.policy,
            "message_imprint": request["message_imprint"],
            "serial_number": serial,
            "gen_time": core.GeneralizedTime(now),
            "accuracy": {"seconds": self.accuracy_seconds},
            "tsa": x509.GeneralName(name="directory_name", value=self.certificate.subject),
        }
        if request["nonce"].native is not None:
            info["nonce"] = request["nonce"].native
        tst_info = tsp.TSTInfo(info)
        signed_data = self._signed_data(tst_info.dump(), bool(request["cert_req"].native))
        return cms.ContentInfo({"content_type": "signed_data", "content": signed_data}), serial

    def _signed_data(self, tst_der: bytes, include_certs: bool) -> cms.SignedData:
        digest = self.signer.digest
        cert = self.certificate
        ess = {"certs": [{
            "cert_hash": hashlib.sha256(cert.dump()).digest(),  # ESSCertIDv2, SHA-256: default
            "issuer_serial": {
                "issuer": [x509.GeneralName(name="directory_name", value=cert.issuer)],
                "serial_number": cert.serial_number,
            },
        }]}
        attributes = cms.CMSAttributes([  # asn1crypto writes SET OF in DER order
            {"type": "content_type", "values": ["tst_info"]},
            {"type": "message_digest", "values": [hashlib.new(digest, tst_der).digest()]},
            {"type": "signing_certificate_v2", "values": [ess]},
        ])
        signature = self.signer.sign(attributes.dump(), digest)  # over the SET OF encoding
        if self.signer.key_type == "rsa":
            algorithm = algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15",
                                                     "parameters": core.Null()})
        else:
            algorithm = algos.SignedDigestAlgorithm({"algorithm": f"{digest}_ecdsa"})
        signer_info = cms.SignerInfo({
            "version": "v1",
            "sid": cms.SignerIdentifier({"issuer_and_serial_number": {
                "issuer": cert.issuer, "serial_number": cert.serial_number}}),
            "digest_algorithm": {"algorithm": digest},
            "signed_attrs": attributes,
            "signature_algorithm": algorithm,
            "signature": signature,
        })
        data: dict[str, object] = {
            "version": "v3",
            "digest_algorithms": [{"algorithm": digest}],
            "encap_content_info": {"content_type": "tst_info",
                                   "content": core.ParsableOctetString(tst_der)},
            "signer_infos": [signer_info],
        }
        if include_certs:
            data["certificates"] = [cert, *self.chain]
        return cms.SignedData(data)


class _StatusOnlyResp(core.Sequence):
    """TimeStampResp without its (OPTIONAL) token: asn1crypto's class requires one."""

    _fields = [("status", tsp.PKIStatusInfo)]


def rejection(failure: str, text: str) -> bytes:
    return _StatusOnlyResp({"status": {
        "status": "rejection",
        "status_string": [text],
        "fail_info": {failure},
    }}).dump()


def verify_signature(cert: x509.Certificate, signature: bytes, data: bytes, digest: str) -> bool:
    """Check a signature with the certificate's public key (does the key match the cert?)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    public = serialization.load_der_public_key(cert.public_key.dump())
    algorithm = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(),
                 "sha512": hashes.SHA512()}[digest]
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(algorithm))
        else:
            return False
    except InvalidSignature:
        return False
    return True
