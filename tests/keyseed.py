"""Test helpers shared by the test modules: create KMS keys in the emulator, write module configs."""

from __future__ import annotations

from dataclasses import dataclass

REGION = "eu-west-1"


@dataclass
class SeededKey:
    key_id: str
    arn: str
    alias: str | None
    spec: str
    usage: str
    public_der: bytes


# The acceptance keys of the token core, plus keys the token must skip.
SEED = [
    ("web-tls", "RSA_2048", "SIGN_VERIFY"),
    ("ec-sign", "ECC_NIST_P256", "SIGN_VERIFY"),
    ("decrypt", "RSA_3072", "ENCRYPT_DECRYPT"),
]


def seed_key(client, alias: str | None, spec: str, usage: str, tags=None) -> SeededKey:
    meta = client.create_key(KeySpec=spec, KeyUsage=usage, Tags=tags or [])["KeyMetadata"]
    if alias:
        client.create_alias(AliasName=f"alias/{alias}", TargetKeyId=meta["KeyId"])
    der = b""
    if spec != "SYMMETRIC_DEFAULT" and not spec.startswith("HMAC"):
        der = client.get_public_key(KeyId=meta["KeyId"])["PublicKey"]
    return SeededKey(meta["KeyId"], meta["Arn"], alias, spec, usage, der)


def write_config(path, kms_server, body: str) -> str:
    """A module config reaching `kms_server` (over HTTPS with its CA bundle when it has one)."""
    head = f'region = "{REGION}"\nendpoint_url = "{kms_server.endpoint_url}"\n'
    if getattr(kms_server, "tls_cert", None):
        head += f'ca_bundle = "{kms_server.ca_bundle}"\n'
    path.write_text(head + body)
    return str(path)


def key_entries(keys: dict[str, SeededKey], by: str = "arn") -> str:
    """The inside of a token's `keys = [...]`: each key (by its ARN or key id) with its name as
    label."""
    return ", ".join(f'{{ key = "{getattr(k, by)}", label = "{n}" }}' for n, k in keys.items())
