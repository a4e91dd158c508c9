"""config.py: lookup order, pReserved, and every good and bad shape of the TOML file."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from pkcs11_kms import config
from pkcs11_kms.ck import CKR
from pkcs11_kms.config import Config, Connection, KeyRef, TokenConfig, load_config
from pkcs11_kms.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
MRK = "mrk-1234abcd12ab34cd56ef1234567890ab"
KEY_ARN = f"arn:aws:kms:eu-west-1:111122223333:key/{KEY_ID}"
ALIAS_ARN = "arn:aws:kms:eu-west-1:111122223333:alias/web"


@pytest.fixture(autouse=True)
def no_system_config(tmp_path, monkeypatch):
    """Tests never read the machine's /etc/pkcs11-kms/config.toml."""
    monkeypatch.setattr(config, "SYSTEM_CONFIG", str(tmp_path / "etc" / "config.toml"))


def load(tmp_path: Path, text: str) -> Config:
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(str(path), environ={"HOME": str(tmp_path / "home")})


def token(cfg: Config, n: int = 0) -> TokenConfig:
    return cfg.tokens[n]


GOOD = [
    # (name, config text, check)
    ("empty file: one default token", "", lambda c: c.tokens == (TokenConfig(),)),
    (
        "top level only: one default token with those settings",
        'region = "eu-west-1"\nprofile = "prod"\nconnect_timeout = 2\nmax_attempts = 5',
        lambda c: (
            token(c).connection
            == Connection(region="eu-west-1", profile="prod", connect_timeout=2.0, max_attempts=5)
        ),
    ),
    (
        "top level is the default, a token overrides",
        (
            'region = "eu-west-1"\npublic_key_operations = "kms"\n'
            '[[token]]\nlabel = "a"\n[[token]]\nlabel = "b"\nregion = "us-east-1"\n'
            'public_key_operations = "local"'
        ),
        lambda c: (
            [(t.connection.region, t.public_key_operations) for t in c.tokens]
            == [("eu-west-1", "kms"), ("us-east-1", "local")]
        ),
    ),
    (
        "every key form, and a key table with a label",
        (
            f'[[token]]\nkeys = ["{KEY_ID}", "{MRK}", "{KEY_ARN}", "alias/web-tls", "{ALIAS_ARN}",'
            ' { key = "alias/x", label = "X" }, { key = "alias/y" }]'
        ),
        lambda c: (
            token(c).keys
            == (
                KeyRef(KEY_ID),
                KeyRef(MRK),
                KeyRef(KEY_ARN),
                KeyRef("alias/web-tls"),
                KeyRef(ALIAS_ARN),
                KeyRef("alias/x", "X"),
                KeyRef("alias/y"),
            )
        ),
    ),
    (
        "filters",
        '[[token]]\nalias_prefix = "alias/web-"\ntags = { team = "web", env = "prod" }',
        lambda c: (
            token(c).alias_prefix == "alias/web-"
            and dict(token(c).tags) == {"team": "web", "env": "prod"}
            and token(c).keys is None
        ),
    ),
    (
        "token_per_key",
        '[[token]]\nalias_prefix = "alias/tls-"\ntoken_per_key = true',
        lambda c: token(c).token_per_key and token(c).label is None,
    ),
    (
        "certificates relative to the config file",
        '[[token]]\ncertificates = ["cert.pem"]',
        lambda c: token(c).certificates == (str(Path(c.path).parent / "cert.pem"),),
    ),
    (
        "ca_bundle, endpoint, retries, logging; names are case-insensitive",
        (
            'ca_bundle = "cert.pem"\nendpoint_url = "https://kms.example:8443/"\n'
            'retry_mode = "Adaptive"\nread_timeout = 0.5\nlog_level = "DEBUG"\nlog_file = "k.log"'
        ),
        lambda c: (
            token(c).connection.ca_bundle.endswith("/cert.pem")
            and token(c).connection.endpoint_url == "https://kms.example:8443/"
            and token(c).connection.retry_mode == "adaptive"
            and token(c).connection.read_timeout == 0.5
            and c.log_level == "debug"
            and c.log_file == str(Path(c.path).parent / "k.log")
        ),
    ),
    ("label of 32 bytes", '[[token]]\nlabel = "' + "é" * 16 + '"', lambda c: len(c.tokens) == 1),
    (
        "key ARN in the token's region",
        f'region = "eu-west-1"\n[[token]]\nkeys = ["{KEY_ARN}"]',
        lambda c: token(c).keys == (KeyRef(KEY_ARN),),
    ),
    (
        "refresh_interval: a default, a token's own, 0 for never",
        'refresh_interval = 60\n[[token]]\nlabel = "a"\n'
        '[[token]]\nlabel = "b"\nrefresh_interval = 0',
        lambda c: [t.refresh_interval for t in c.tokens] == [60.0, 0.0],
    ),
    ("refresh_interval default", "", lambda c: token(c).refresh_interval == 300.0),
    (
        "two per-key tokens without label",
        (
            '[[token]]\nalias_prefix = "alias/a"\ntoken_per_key = true\n'
            '[[token]]\nalias_prefix = "alias/b"\ntoken_per_key = true'
        ),
        lambda c: len(c.tokens) == 2,
    ),
]


@pytest.mark.parametrize("text, check", [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_good(tmp_path, text, check):
    cfg = load(tmp_path, text)
    assert cfg.path == str(tmp_path / "config.toml")
    assert check(cfg), cfg


BAD = [
    # (config text, what the message must say)
    ('region = "eu-west-1"\nfoo bar', "TOML syntax error: .*line 2, column 5"),
    ('region = "eu-west-1', "TOML syntax error: Unterminated string"),
    ("[[token]]\nlabel = 'a'\nlabel = 'b'\n", "TOML syntax error: Cannot overwrite .*line 3"),
    (
        'regoin = "eu-west-1"',
        "unknown key 'regoin' in the top level \\(did you mean 'region'\\?\\)",
    ),
    ('[[token]]\nlable = "x"', "\\[\\[token\\]\\] #1: unknown key 'lable' in \\[\\[token\\]\\]"),
    ('keys = ["alias/x"]', "'keys' belongs in a \\[\\[token\\]\\] table"),
    ('[[token]]\nlog_level = "debug"', "'log_level' belongs in the top level"),
    ('[[token]]\nkeys = [{ key = "alias/x", lable = "y" }]', "keys: \\[0\\]: unknown key 'lable'"),
    ("[[token]]\nkeys = [{ label = 'y' }]", "needs key ="),
    ("[[token]]\nkeys = [1]", "keys: \\[0\\]: must be a string or"),
    ('[[token]]\nkeys = ["web-tls"]', "'web-tls' is not a key id, mrk- id, key ARN, alias"),
    ('[[token]]\nkeys = ["arn:aws:kms:eu-west-1:1111:key/x"]', "is not a key id"),
    ('[[token]]\nkeys = ["alias/a", "alias/a"]', "keys: \\[1\\]: 'alias/a' is listed twice"),
    ("[[token]]\nkeys = []", "keys: is empty"),
    ('[[token]]\nkeys = ["alias/a"]\nalias_prefix = "alias/"', "use one or the other"),
    ('[[token]]\nkeys = ["alias/a"]\ntags = { a = "b" }', "use one or the other"),
    ('[[token]]\nalias_prefix = "web-"', "alias_prefix: must start with 'alias/'"),
    ("[[token]]\ntags = { a = 1 }", "tags: a: must be a string, not an integer"),
    ('[[token]]\nlabel = "' + "x" * 33 + '"', "label: 'x+' is longer than 32 bytes"),
    ('[[token]]\nlabel = "' + "é" * 17 + '"', "longer than 32 bytes"),
    ('[[token]]\nlabel = " "', "label: must not be empty"),
    (
        '[[token]]\nlabel = "a"\n[[token]]\nlabel = "a"',
        "label 'a' is used twice \\(\\[\\[token\\]\\] #1 and #2\\)",
    ),
    ("[[token]]\n[[token]]", "#1 and #2 both have no label"),
    ('[[token]]\nlabel = "a"\ntoken_per_key = true', "with token_per_key = true each token takes"),
    (
        '[[token]]\ntoken_per_key = true\nkeys = [{ key = "alias/a", label = "' + "x" * 33 + '" }]',
        "keys\\[0\\]: label: .* longer than 32 bytes",
    ),
    (
        '[[token]]\nlabel = "a"\n[[token]]\ntoken_per_key = true\nkeys = [{key="alias/b", label="a"}]',
        "label 'a' is used twice",
    ),
    (
        f'region = "us-east-1"\n[[token]]\nkeys = ["{KEY_ARN}"]',
        "is in eu-west-1, the token uses us-east-1",
    ),
    ("[token]\nlabel = 'a'", "write \\[\\[token\\]\\], not \\[token\\]"),
    ("token = []", "defines no token"),
    ("region = 1", "region: must be a string, not an integer"),
    ('region = "EU west"', "region: 'EU west' is not a region name"),
    ('profile = ""', "profile: must not be empty"),
    ("connect_timeout = 0", "connect_timeout: must be a number of seconds > 0"),
    ("read_timeout = -1.5", "read_timeout: must be a number of seconds > 0"),
    ("read_timeout = inf", "read_timeout: must be a number of seconds > 0"),
    ('read_timeout = "5"', "read_timeout: must be an integer or a number, not a string"),
    ("connect_timeout = true", "must be an integer or a number, not true or false"),
    ("max_attempts = 0", "max_attempts: must be >= 1"),
    ("refresh_interval = -1", "refresh_interval: must be a number of seconds >= 0 \\(0: never\\)"),
    ("refresh_interval = inf", "refresh_interval: must be a number of seconds >= 0"),
    ('refresh_interval = "5m"', "refresh_interval: must be an integer or a number, not a string"),
    ("[[token]]\nrefresh_interval = nan", "refresh_interval: must be a number of seconds >= 0"),
    ("max_attempts = 2.5", "max_attempts: must be an integer, not a number"),
    ('retry_mode = "fast"', "retry_mode: 'fast' is not one of standard, adaptive, legacy"),
    ('log_level = "verbose"', "log_level: 'verbose' is not one of debug, info, warning, error"),
    ('public_key_operations = "remote"', "is not one of local, kms"),
    ('endpoint_url = "kms.example.com"', "endpoint_url: 'kms.example.com' is not an http"),
    ('endpoint_url = "ftp://kms.example.com"', "is not an http:// or https:// URL"),
    ('endpoint_url = "http://host:99999"', "is not a URL"),
    ('ca_bundle = "missing.pem"', "ca_bundle: cannot read .*/missing.pem: No such file"),
    ('[[token]]\ncertificates = ["missing.pem"]', "certificates: \\[0\\]: cannot read"),
    ('[[token]]\ncertificates = "cert.pem"', "certificates: must be an array, not a string"),
    ("[[token]]\ntoken_per_key = 1", "token_per_key: must be true or false"),
    ("region = 1979-05-27", "must be a string, not a date/time"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[b[1][:40] for b in BAD])
def test_bad(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    error = info.value
    assert error.rv == CKR.FUNCTION_FAILED
    assert error.path == str(tmp_path / "config.toml")
    assert re.search(message, error.problem), error.problem
    assert str(tmp_path / "config.toml") in str(error) and "\n" not in str(error)


def test_unreadable_and_not_utf8(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b'region = "\xff"')
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(str(path), environ={})
    with pytest.raises(ConfigError, match="cannot read: Is a directory"):
        load_config(str(tmp_path) + "/", environ={})
    if os.geteuid() != 0:
        path.write_text("")
        path.chmod(0)
        with pytest.raises(ConfigError, match="cannot read: Permission denied"):
            load_config(str(path), environ={})


# --- lookup order -------------------------------------------------------------------------------


@pytest.fixture
def places(tmp_path):
    """A config file in each place of the lookup order, each with its own region."""
    home = tmp_path / "home"
    files = {
        "reserved": tmp_path / "reserved.toml",
        "env": tmp_path / "env.toml",
        "user": home / ".config" / "pkcs11-kms" / "config.toml",
        "system": Path(config.SYSTEM_CONFIG),
    }
    for n, path in enumerate(files.values()):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'region = "r-{n}"\n')
    return home, files


def test_lookup_order(places):
    home, files = places
    env = {"HOME": str(home), "PKCS11_KMS_CONFIG": str(files["env"])}
    assert load_config(str(files["reserved"]), env).path == str(files["reserved"])
    assert load_config(None, env).path == str(files["env"])
    del env["PKCS11_KMS_CONFIG"]
    assert load_config(None, env).path == str(files["user"])
    files["user"].unlink()
    cfg = load_config(None, env)
    assert cfg.path == str(files["system"]) and cfg.tokens[0].connection.region == "r-3"
    files["system"].unlink()
    assert load_config(None, env) == Config()


def test_xdg_config_home(places, tmp_path):
    home, files = places
    xdg = tmp_path / "xdg" / "pkcs11-kms" / "config.toml"
    xdg.parent.mkdir(parents=True)
    xdg.write_text("")
    assert load_config(
        None, {"HOME": str(home), "XDG_CONFIG_HOME": str(xdg.parent.parent)}
    ).path == str(xdg)
    # a relative XDG_CONFIG_HOME is invalid (XDG spec): ~/.config is used
    assert load_config(None, {"HOME": str(home), "XDG_CONFIG_HOME": "xdg"}).path == str(
        files["user"]
    )


def test_no_file_means_defaults(tmp_path):
    cfg = load_config(None, {"HOME": str(tmp_path)})
    assert cfg == Config(path=None, tokens=(TokenConfig(),), log_level="warning", log_file=None)
    # region, profile and endpoint stay None: botocore resolves AWS_REGION, AWS_PROFILE,
    # AWS_ENDPOINT_URL_KMS itself
    assert cfg.tokens[0].connection == Connection()
    assert cfg.tokens[0].keys is None and not cfg.tokens[0].token_per_key


def test_missing_env_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"no such file \(named by \$PKCS11_KMS_CONFIG\)"):
        load_config(None, {"HOME": str(tmp_path), "PKCS11_KMS_CONFIG": str(tmp_path / "no.toml")})


@pytest.mark.parametrize(
    "reserved, outcome",
    [
        # what NSS and others put in pReserved: ignored
        ("configdir='sql:/etc/pki/nssdb' certPrefix='' keyPrefix='' secmod='secmod.db'", "env"),
        ("", "env"),
        ("some-string", "env"),
        # clearly a path: must exist
        ("/nonexistent/pkcs11-kms.toml", "missing"),
        ("./nonexistent", "missing"),
        ("../nonexistent", "missing"),
        ("~/nonexistent", "missing"),
        ("nonexistent.toml", "missing"),
        # an existing file, whatever its name
        ("{tmp}/reserved.toml", "reserved"),
        ("~/custom.conf", "home-file"),
    ],
)
def test_reserved(places, tmp_path, reserved, outcome):
    home, files = places
    (home / "custom.conf").write_text("")
    env = {"HOME": str(home), "PKCS11_KMS_CONFIG": str(files["env"])}
    reserved = reserved.replace("{tmp}", str(tmp_path))
    if outcome == "missing":
        with pytest.raises(ConfigError, match=r"no such file \(named by C_Initialize pReserved\)"):
            load_config(reserved, env)
        return
    expected = {
        "env": files["env"],
        "reserved": files["reserved"],
        "home-file": home / "custom.conf",
    }
    assert load_config(reserved, env).path == str(expected[outcome])


def test_reserved_existing_relative_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("pkcs11-kms.conf").write_text('region = "eu-west-1"')
    assert load_config("pkcs11-kms.conf", {"HOME": str(tmp_path)}).path == str(
        tmp_path / "pkcs11-kms.conf"
    )


# --- the shipped examples -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["config.toml", "minimal.toml", "per-key-tokens.toml", "emulator.toml"]
)
def test_examples_load(name):
    cfg = load_config(str(ROOT / "conf" / name), environ={})
    assert cfg.tokens


def test_examples_say_what_they_show():
    minimal = load_config(str(ROOT / "conf" / "minimal.toml"), environ={}).tokens[0]
    assert minimal.keys and minimal.alias_prefix is None and not minimal.tags
    per_key = load_config(str(ROOT / "conf" / "per-key-tokens.toml"), environ={}).tokens[0]
    assert per_key.token_per_key and per_key.alias_prefix and per_key.keys is None
    emulator = load_config(str(ROOT / "conf" / "emulator.toml"), environ={}).tokens[0]
    assert emulator.connection.endpoint_url == "http://127.0.0.1:4566"


def test_reference_documents_every_key():
    reference = (ROOT / "conf" / "config.toml").read_text()
    docs = (ROOT / "docs" / "configuration.md").read_text()
    for name in config._SETTINGS:
        assert re.search(rf"^# (# )?{name} = ", reference, re.MULTILINE), name
        assert f"`{name}`" in docs, name


def test_reference_key_examples_are_valid(tmp_path):
    reference = (ROOT / "conf" / "config.toml").read_text()
    block = re.search(r"^# keys = \[\n(.*?)^# \]\n", reference, re.MULTILINE | re.DOTALL)
    assert block
    keys = "\n".join(line[2:] for line in block.group(1).splitlines())
    cfg = load(tmp_path, f"[[token]]\nkeys = [\n{keys}\n]")
    assert len(cfg.tokens[0].keys) == 5


def test_every_connection_field_has_a_setting():
    for f in dataclasses.fields(Connection):
        assert f.name in config._SETTINGS


def test_values_are_frozen_and_hashable(tmp_path):
    cfg = load(tmp_path, '[[token]]\ntags = { a = "b" }')
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tokens[0].label = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.tokens[0].tags["a"] = "c"  # type: ignore[index]
    assert hash(cfg) == hash(cfg)
