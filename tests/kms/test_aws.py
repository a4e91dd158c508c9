"""AwsKms against moto and a scripted endpoint: deadlines, network errors, retries, the public-key
cache, pagination, threads, threadless mode, TLS, the AWS environment chain, lazy import."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pkcs11_kms.ck import CKR
from pkcs11_kms.core.kms_errors import failure, rv_for
from pkcs11_kms.kms import AwsKms, Connection, KmsError, backend_for, deadline_for, loop
from pkcs11_kms.kms.aws import _SLACK

from .kmstest import (
    REGION,
    ScriptedKms,
    SilentServer,
    b64,
    fork_while_busy,
    free_port,
    make_tls,
)

pytestmark = pytest.mark.usefixtures("fresh_loop")


def records(caplog):
    return [r for r in caplog.records if r.name == "pkcs11_kms.kms"]


def public_key_reply(arn="arn:aws:kms:eu-west-1:111122223333:key/k-1"):
    der = rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der, {
        "KeyId": arn,
        "PublicKey": b64(der),
        "KeySpec": "RSA_2048",
        "KeyUsage": "ENCRYPT_DECRYPT",
        "EncryptionAlgorithms": ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"],
    }


# -- configuration --------------------------------------------------------------------------


def test_deadline_covers_every_attempt_and_backoff():
    assert deadline_for(Connection(connect_timeout=1, read_timeout=2, max_attempts=1)) == 3 + _SLACK
    # 3 attempts of 5+15 s, backoffs of at most 1 s and 2 s
    assert deadline_for(Connection()) == 60 + 3 + _SLACK


def test_client_config_comes_from_the_connection(scripted):
    connection = scripted.connection(connect_timeout=1.5, read_timeout=7, max_attempts=4,
                                     retry_mode="adaptive")  # fmt: skip
    backend = AwsKms(connection)
    client = loop.run(backend._client(), 30)
    config = client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (1.5, 7)
    assert config.retries["total_max_attempts"] == 4 and config.retries["mode"] == "adaptive"
    assert client.meta.region_name == REGION
    assert client.meta.endpoint_url == scripted.endpoint_url
    assert loop.run(backend._client(), 30) is client  # one client per connection and loop


def test_backend_for_is_one_per_connection(moto_server):
    a = Connection(region=REGION, endpoint_url=moto_server.endpoint_url)
    same = Connection(region=REGION, endpoint_url=moto_server.endpoint_url)
    assert backend_for(a) is backend_for(same)
    assert backend_for(a) is not backend_for(Connection(region=REGION, endpoint_url="http://x"))


def test_importing_and_making_a_backend_imports_no_aws_library():
    code = (
        "import sys, pkcs11_kms.kms as k\n"
        "k.backend_for(k.Connection(region='eu-west-1'))\n"
        "print(sorted(m for m in ('aiobotocore', 'botocore', 'aiohttp', 'asyncio', 'boto3',"
        " 'cryptography') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- deadlines and network failures ------------------------------------------------------------


def test_silent_server_times_out_within_the_read_timeout():
    server = SilentServer()
    try:
        backend = AwsKms(Connection(region=REGION, endpoint_url=server.endpoint_url,
                                    connect_timeout=1, read_timeout=1, max_attempts=1))  # fmt: skip
        start = time.monotonic()
        with pytest.raises(KmsError) as caught:
            backend.generate_random(8)
        assert time.monotonic() - start < 1 + 2.5
        assert (caught.value.code, rv_for(caught.value)) == ("Timeout", CKR.DEVICE_ERROR)
    finally:
        server.close()


def test_dripping_server_is_cut_by_the_overall_deadline():
    """A server that keeps sending a byte never trips the socket read timeout: the deadline does."""
    server = SilentServer(drip=True)
    try:
        connection = Connection(region=REGION, endpoint_url=server.endpoint_url,
                                connect_timeout=0.5, read_timeout=0.5, max_attempts=1)  # fmt: skip
        backend = AwsKms(connection)
        backend._ready_generation = loop.generation()  # measure the request alone
        loop.run(backend._client(), 30)
        start = time.monotonic()
        with pytest.raises(KmsError) as caught:
            backend.generate_random(8)
        elapsed = time.monotonic() - start
        assert caught.value.code == "Timeout"
        assert deadline_for(connection) - 0.2 < elapsed < deadline_for(connection) + 1.5
    finally:
        server.close()


def test_closed_port_is_a_network_error_at_once():
    backend = AwsKms(Connection(region=REGION, endpoint_url=f"http://127.0.0.1:{free_port()}",
                                max_attempts=1))  # fmt: skip
    start = time.monotonic()
    with pytest.raises(KmsError) as caught:
        backend.describe_key("alias/x")
    assert time.monotonic() - start < 2
    assert (caught.value.code, rv_for(caught.value)) == ("NetworkError", CKR.DEVICE_ERROR)
    assert caught.value.key == "alias/x"


def test_tls_with_the_ca_bundle(tmp_path):
    ca_bundle, context = make_tls(tmp_path)
    server = ScriptedKms(tls=context)
    try:
        server.reply("GenerateRandom", {"Plaintext": b64(b"12345678")})
        trusted = AwsKms(server.connection(ca_bundle=ca_bundle))
        assert trusted.generate_random(8) == b"12345678"
        with pytest.raises(KmsError) as caught:
            AwsKms(server.connection()).generate_random(8)
        assert (caught.value.code, rv_for(caught.value)) == ("TlsError", CKR.DEVICE_ERROR)
    finally:
        server.close()


# -- KMS answers ------------------------------------------------------------------------------


def test_kms_error_carries_the_request_id_and_logs_once(scripted, caplog):
    caplog.set_level(logging.DEBUG, "pkcs11_kms.kms")
    scripted.error("Sign", "KMSInvalidStateException", request_id="req-0042")
    message = b"SECRET-DIGEST-BYTES-0123456789ab"
    with pytest.raises(KmsError) as caught:
        AwsKms(scripted.connection()).sign("alias/k", message, "DIGEST", "ECDSA_SHA_256")
    error = caught.value
    assert (error.code, error.operation, error.key, error.request_id) == (
        "KMSInvalidStateException", "Sign", "alias/k", "req-0042")  # fmt: skip
    assert rv_for(error) == CKR.KEY_FUNCTION_NOT_PERMITTED
    assert records(caplog) == []  # the backend logs nothing: the core's edge writes the line
    failure(error)
    (record,) = records(caplog)
    assert all(part in record.getMessage() for part in ("Sign", "alias/k", "req-0042"))
    assert "SECRET" not in caplog.text


def test_throttling_is_retried_as_configured(scripted):
    scripted.error("GenerateRandom", "ThrottlingException")
    with pytest.raises(KmsError) as caught:
        AwsKms(scripted.connection(max_attempts=2)).generate_random(8)
    assert (caught.value.code, rv_for(caught.value)) == ("ThrottlingException", CKR.DEVICE_ERROR)
    assert scripted.count("GenerateRandom") == 2


def test_user_agent_is_the_one_botocore_builds(scripted):
    """The client's cached User-Agent (aws._cache_user_agent) is, on every request and attempt,
    the string botocore would build for it then."""
    from botocore.useragent import UserAgentString, register_feature_id

    def parts(text):
        text = text.decode() if isinstance(text, bytes) else text
        return sorted(",".join(sorted(p.split(","))) for p in text.split())  # m/ ids: a set

    backend = AwsKms(scripted.connection(max_attempts=2))
    client = loop.run(backend._client(), 30)
    sent = []

    def keep(request, **_):
        built = UserAgentString.to_string(client._user_agent_creator)  # botocore's own build
        sent.append((parts(request.headers["User-Agent"]), parts(built)))

    def paginating(**_):  # a feature id of one request only: its User-Agent is another
        if len(sent) == 1:
            register_feature_id("PAGINATOR")

    client.meta.events.register("before-send.kms", keep)
    client.meta.events.register("before-call.kms", paginating)
    scripted.reply("GenerateRandom", {"Plaintext": b64(bytes(8))})
    for _ in range(3):
        backend.generate_random(8)
    scripted.error("ListKeys", "ThrottlingException")
    with pytest.raises(KmsError):
        backend.list_keys()
    assert len(sent) == 5 and all(header == built for header, built in sent)
    assert sent[1][0] != sent[0][0] == sent[2][0]
    assert any("pkcs11-kms/" in p for p in sent[0][0])


def test_verify_says_false_for_an_invalid_signature(scripted, caplog):
    caplog.set_level(logging.DEBUG, "pkcs11_kms.kms")
    backend = AwsKms(scripted.connection())
    scripted.reply("Verify", {"SignatureValid": True, "KeyId": "k"})
    assert backend.verify("k", bytes(32), "DIGEST", b"sig", "ECDSA_SHA_256") is True
    scripted.replies.clear()
    scripted.error("Verify", "KMSInvalidSignatureException")
    assert backend.verify("k", bytes(32), "DIGEST", b"sig", "ECDSA_SHA_256") is False
    assert records(caplog) == []


def test_public_key_cache_keeps_successes_only(scripted):
    der, body = public_key_reply()
    scripted.error("GetPublicKey", "KeyUnavailableException", status=500)
    scripted.reply("GetPublicKey", body)
    backend = AwsKms(scripted.connection())
    with pytest.raises(KmsError):
        backend.get_public_key("alias/k")
    first = backend.get_public_key("alias/k")
    assert (first.der, first.key_id, first.arn) == (der, "k-1", body["KeyId"])
    assert backend.get_public_key("alias/k") is first
    assert scripted.count("GetPublicKey") == 2  # the failure was not cached, the success is
    AwsKms(scripted.connection(read_timeout=3)).get_public_key("alias/k")  # another connection
    assert scripted.count("GetPublicKey") == 3


def test_lists_follow_markers(scripted):
    scripted.reply("ListKeys", {"Keys": [{"KeyId": "a"}, {"KeyId": "b"}], "Truncated": True,
                                "NextMarker": "m1"})  # fmt: skip
    scripted.reply("ListKeys", {"Keys": [{"KeyId": "c"}], "Truncated": False})
    scripted.reply("ListResourceTags", {"Tags": [{"TagKey": "x", "TagValue": "1"}],
                                        "Truncated": True, "NextMarker": "t1"})  # fmt: skip
    scripted.reply("ListResourceTags", {"Tags": [{"TagKey": "y", "TagValue": "2"}]})
    backend = AwsKms(scripted.connection())
    assert backend.list_keys() == ["a", "b", "c"]
    assert backend.list_resource_tags("a") == {"x": "1", "y": "2"}
    markers = [params.get("Marker") for op, params in scripted.requests if op != "GetPublicKey"]
    assert markers == [None, "m1", None, "t1"]


def test_dry_runs(scripted, moto_server):
    backend = AwsKms(scripted.connection())
    scripted.error("Sign", "DryRunOperationException", status=412)
    assert backend.dry_run_sign("alias/k", "ECDSA_SHA_384") is True
    op, params = scripted.requests[-1]
    assert params["DryRun"] is True and params["MessageType"] == "DIGEST"
    assert len(b64(bytes(48))) == len(params["Message"])
    _, body = public_key_reply()
    scripted.reply("GetPublicKey", body)
    scripted.error("Decrypt", "DryRunOperationException", status=412)
    assert backend.dry_run_decrypt("alias/d", "RSAES_OAEP_SHA_256") is True
    scripted.replies["Sign"] = []
    scripted.error("Sign", "AccessDeniedException")
    with pytest.raises(KmsError) as caught:
        backend.dry_run_sign("alias/k", "ECDSA_SHA_256")
    assert rv_for(caught.value) == CKR.KEY_FUNCTION_NOT_PERMITTED
    # plain moto ignores DryRun and signs: the doctor must not read that as "permitted"
    key = moto_server.client().create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    moto = backend_for(Connection(region=REGION, endpoint_url=moto_server.endpoint_url))
    assert moto.dry_run_sign(key["KeyMetadata"]["KeyId"], "ECDSA_SHA_256") is False


def test_dry_runs_on_the_emulator(kms_server):
    client = kms_server.client()
    sign = client.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    decrypt = client.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]
    emulator = backend_for(Connection(region=REGION, endpoint_url=kms_server.endpoint_url))
    assert emulator.dry_run_sign(sign["Arn"], "ECDSA_SHA_384") is True
    assert emulator.dry_run_decrypt(decrypt["Arn"], "RSAES_OAEP_SHA_1") is True
    client.disable_key(KeyId=sign["KeyId"])
    with pytest.raises(KmsError) as caught:
        emulator.dry_run_sign(sign["Arn"], "ECDSA_SHA_384")
    assert caught.value.code == "DisabledException"


# -- threads -----------------------------------------------------------------------------------


def run_threads(count, work):
    errors, results = [], []

    def body(i):
        try:
            results.append(work(i))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    return results


def test_eight_threads_share_the_client(moto_server):
    client = moto_server.client()
    key = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    backend = AwsKms(Connection(region=REGION, endpoint_url=moto_server.endpoint_url))

    def work(i):
        for _ in range(5):
            assert backend.describe_key(key["Arn"]).key_id == key["KeyId"]
            assert len(backend.generate_random(i + 1)) == i + 1
        return i

    assert sorted(run_threads(8, work)) == list(range(8))


def test_eight_threads_wait_in_parallel(scripted):
    scripted.reply("GenerateRandom", {"Plaintext": b64(b"1234")}, delay=0.3)
    backend = AwsKms(scripted.connection())
    backend.generate_random(4)  # client made
    start = time.monotonic()
    run_threads(8, lambda i: backend.generate_random(4))
    assert time.monotonic() - start < 1.2  # serial would take 2.4 s


def test_threadless_mode_makes_no_thread(moto_server):
    loop.set_threads_allowed(False)
    time.sleep(0.1)  # executor threads of earlier generations wind down
    before = {t.ident for t in threading.enumerate()}
    backend = AwsKms(Connection(region=REGION, endpoint_url=moto_server.endpoint_url))
    assert len(backend.generate_random(16)) == 16
    assert run_threads(4, lambda i: len(backend.generate_random(8))) == [8] * 4
    assert {t.ident for t in threading.enumerate()} <= before
    assert not [t for t in threading.enumerate() if t.name.startswith("pkcs11-kms")]


# -- the AWS environment chain --------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """No credentials, region or profile from anywhere but what the test sets."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CA_BUNDLE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    return monkeypatch, tmp_path


def test_no_credentials(aws_env, moto_server, caplog):
    caplog.set_level(logging.DEBUG, "pkcs11_kms.kms")
    start = time.monotonic()
    with pytest.raises(KmsError) as caught:
        AwsKms(Connection(region=REGION, endpoint_url=moto_server.endpoint_url)).generate_random(8)
    assert time.monotonic() - start < 5
    assert (caught.value.code, rv_for(caught.value)) == ("NoCredentials", CKR.DEVICE_ERROR)
    failure(caught.value)
    (record,) = records(caplog)
    assert record.levelno == logging.ERROR


def test_no_region(aws_env):
    monkeypatch, _ = aws_env
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(KmsError) as caught:
        AwsKms(Connection()).generate_random(8)
    assert (caught.value.code, rv_for(caught.value)) == ("NoRegion", CKR.DEVICE_ERROR)


def key_in(moto_server, region):
    return moto_server.client(region).create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")[
        "KeyMetadata"]  # fmt: skip


def test_environment_like_the_aws_cli(aws_env, moto_server):
    monkeypatch, _ = aws_env
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_REGION", "us-west-2")  # wins, as in the AWS CLI
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", moto_server.endpoint_url)
    key = key_in(moto_server, "us-west-2")
    assert AwsKms(Connection()).describe_key(key["KeyId"]).arn == key["Arn"]


def test_profile_from_connection_or_environment(aws_env, moto_server):
    monkeypatch, tmp_path = aws_env
    (tmp_path / "config").write_text(
        "[profile signer]\nregion = ap-southeast-2\n"
        f"aws_access_key_id = testing\naws_secret_access_key = testing\n"
        f"services = local\n[services local]\nkms =\n  endpoint_url = {moto_server.endpoint_url}\n"
    )
    key = key_in(moto_server, "ap-southeast-2")
    assert AwsKms(Connection(profile="signer")).describe_key(key["KeyId"]).arn == key["Arn"]
    loop.shutdown()
    monkeypatch.setenv("AWS_PROFILE", "signer")
    assert AwsKms(Connection()).describe_key(key["KeyId"]).arn == key["Arn"]
    with pytest.raises(KmsError) as caught:
        AwsKms(Connection(profile="nobody", read_timeout=3)).generate_random(8)
    assert caught.value.code == "ProfileNotFound"


def test_usable_again_after_shutdown(moto_server):
    backend = AwsKms(Connection(region=REGION, endpoint_url=moto_server.endpoint_url))
    assert len(backend.generate_random(4)) == 4
    loop.shutdown()
    assert len(backend.generate_random(4)) == 4


def test_forked_children_call_kms_while_parent_threads_do(moto_server):
    """Children forked while 4 threads are mid-call use the inherited backend (no
    re-initialisation) on a fresh loop; the parent's threads never notice."""
    backend = AwsKms(Connection(region=REGION, endpoint_url=moto_server.endpoint_url))
    backend.generate_random(4)
    fork_while_busy(lambda: backend.generate_random(16),
                    lambda: len(backend.generate_random(4)) == 4, children=3)
    assert len(backend.generate_random(4)) == 4
