"""BrokerSettings: NATS_* environment variables and .env files to a JetStreamBroker, secrets kept out of sight."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import ssl
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from pydantic import ValidationError

from example_app.app import DEFAULT_NATS_URL, create_app
from jetstream_fastapi import BrokerSettings, ConnectError, InvalidArgumentError, JetStreamBroker
from jetstream_fastapi.core.options import BROKER_OPTIONS
from jetstream_fastapi.server import NatsServer
from jetstream_fastapi.settings import UnknownSettingWarning

TOKEN = "tok-3f9a1c7e-secret"
USER = "alice-the-user"
PASSWORD = "pw-9d2b7e41-secret"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No NATS_* variable from the outside, and a working directory without a .env file."""
    for name in list(os.environ):
        if name.upper().startswith("NATS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed certificate for localhost and 127.0.0.1: ``cert``, ``key`` and ``both`` (one file)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("certs")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    both = folder / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    return {"cert": cert, "key": key, "both": both}


# -- reading ---------------------------------------------------------------------------------------------


def test_nothing_set_leaves_every_default_to_the_broker() -> None:
    settings = BrokerSettings()
    assert settings.servers is None
    assert settings.connect_options() == {}
    assert settings.ssl_context() is None
    built, plain = settings.broker(), JetStreamBroker()
    assert built.servers == plain.servers
    assert built.defaults == plain.defaults
    assert (built.publish_timeout, built.shutdown_timeout) == (plain.publish_timeout, plain.shutdown_timeout)


def test_env_vars_reach_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "NATS_URL": "nats://a.example:4222",
        "NATS_BATCH_SIZE": "25",
        "NATS_FETCH_WAIT": "1.5",
        "NATS_CONCURRENCY": "4",
        "NATS_ACK_WAIT": "60",
        "NATS_MAX_DELIVER": "-1",
        "NATS_CONNECT_TIMEOUT": "3",
        "NATS_PUBLISH_TIMEOUT": "2.5",
        "NATS_SHUTDOWN_TIMEOUT": "20",
        "NATS_MAX_ACK_PENDING": "40",
        "NATS_DEAD_LETTERS": "false",
        "NATS_DELIVER_POLICY": "last",
        "NATS_INACTIVE_THRESHOLD": "30",
        "NATS_HANDLER_TIMEOUT": "2.5",
        "NATS_AUTO_PROVISION": "false",
        "NATS_STREAM_MISMATCH": "update",
        "NATS_NAME": "orders-api",
        "NATS_TOKEN": TOKEN,
    }.items():
        monkeypatch.setenv(name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownSettingWarning)  # every one of them is a known variable
        settings = BrokerSettings()
    broker = settings.broker()
    assert broker.servers == ["nats://a.example:4222"]
    defaults = broker.defaults
    assert (defaults.batch_size, defaults.fetch_wait, defaults.concurrency) == (25, 1.5, 4)
    assert (defaults.ack_wait, defaults.max_deliver, defaults.max_ack_pending) == (60.0, -1, 40)
    assert (defaults.dead_letter, defaults.deliver_policy) == (False, "last")
    assert (defaults.inactive_threshold, defaults.handler_timeout) == (30.0, 2.5)
    assert (broker.auto_provision, broker.stream_mismatch) == (False, "update")
    assert (broker.publish_timeout, broker.shutdown_timeout) == (2.5, 20.0)
    assert settings.connect_timeout == 3.0
    assert settings.connect_options() == {"token": TOKEN, "name": "orders-api"}


def test_lower_case_names_work_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nats_batch_size", "7")
    assert BrokerSettings().batch_size == 7


def test_comma_separated_url_is_a_server_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", " nats://a:4222, nats://b:4222 ,,nats://c:4222")
    settings = BrokerSettings()
    assert settings.servers == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
    assert settings.broker().servers == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]


def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "")
    monkeypatch.setenv("NATS_TOKEN", "")
    monkeypatch.setenv("NATS_BATCH_SIZE", "")
    settings = BrokerSettings()
    assert (settings.url, settings.token, settings.batch_size) == (None, None, None)


@pytest.mark.filterwarnings("ignore::jetstream_fastapi.settings.UnknownSettingWarning")  # after the first one
def test_dotenv_file_in_the_working_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# the service's .env\n"
        "NATS_URL=nats://from-dotenv:4222\n"
        "NATS_BATCH_SIZE=3\n"
        f"NATS_PASSWORD='{PASSWORD}'\n"
        "DATABASE_URL=postgres://elsewhere\n"  # other variables are ignored
        "NATS_BACH_SIZE=1\n"  # an unknown NATS_* variable is ignored too, with a warning
    )
    with pytest.warns(UnknownSettingWarning, match=r"NATS_BACH_SIZE \(in the \.env file \.env\).*NATS_BATCH_SIZE\?"):
        settings = BrokerSettings()
    assert (settings.servers, settings.batch_size) == (["nats://from-dotenv:4222"], 3)
    assert settings.password is not None
    assert settings.password.get_secret_value() == PASSWORD
    # The environment wins over the file, keyword arguments over both.
    monkeypatch.setenv("NATS_BATCH_SIZE", "30")
    assert BrokerSettings().batch_size == 30
    assert BrokerSettings(batch_size=300).batch_size == 300


def test_dotenv_file_given_explicitly(tmp_path: Path) -> None:
    env_file = tmp_path / "config" / "prod.env"
    env_file.parent.mkdir()
    env_file.write_text("NATS_URL=nats://prod-1:4222,nats://prod-2:4222\nNATS_ACK_WAIT=90\n")
    settings = BrokerSettings(_env_file=env_file)  # type: ignore[call-arg]  # pydantic-settings' init argument
    assert settings.servers == ["nats://prod-1:4222", "nats://prod-2:4222"]
    assert settings.ack_wait == 90.0
    assert BrokerSettings().url is None  # not read without being named (and no .env in the cwd)


def test_overrides_win_over_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://from-env:4222")
    monkeypatch.setenv("NATS_BATCH_SIZE", "25")
    broker = BrokerSettings().broker(servers=["nats://x:1", "nats://y:2"], batch_size=2, max_ack_pending=50)
    assert broker.servers == ["nats://x:1", "nats://y:2"]
    assert (broker.defaults.batch_size, broker.defaults.max_ack_pending) == (2, 50)


def test_every_broker_option_has_a_variable() -> None:
    # Everything but the server list (NATS_URL) and the options that take Python objects (connect_options:
    # the variables of the credentials, TLS and name); NATS_DEAD_LETTERS (the old spelling) sets dead_letter.
    options = (BROKER_OPTIONS | set(inspect.signature(JetStreamBroker).parameters)) - {
        "servers",
        "streams",
        "backoff",
        "options",
        "connect_options",
        "dead_letter",
    }
    assert options <= set(BrokerSettings.model_fields), sorted(options - set(BrokerSettings.model_fields))


@pytest.mark.parametrize(
    ("name", "nearest"),
    [
        ("NATS_BACH_SIZE", "NATS_BATCH_SIZE"),
        ("NATS_HANDLER_TIMOUT", "NATS_HANDLER_TIMEOUT"),
        ("nats_ack_wiat", "NATS_ACK_WAIT"),
        ("NATS_CREDS", "NATS_CREDS_FILE"),  # the nats CLI's name for it
    ],
)
def test_unknown_variable_warns_with_the_nearest_valid_name(
    monkeypatch: pytest.MonkeyPatch, name: str, nearest: str
) -> None:
    monkeypatch.setenv(name, "3")
    with pytest.warns(UnknownSettingWarning) as caught:
        settings = BrokerSettings()
    [warning] = caught
    assert str(warning.message) == (
        f"{name.upper()} (in the environment) is not a BrokerSettings variable and is ignored; did you mean {nearest}?"
    )
    assert settings.broker().defaults == JetStreamBroker().defaults  # ignored indeed


def test_unknown_variable_with_no_near_name_still_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_CONTEXT", "dev")
    with pytest.warns(UnknownSettingWarning, match=r"NATS_CONTEXT \(in the environment\) .* see BrokerSettings"):
        BrokerSettings()


def test_known_and_foreign_variables_do_not_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_BATCH_SIZE", "3")
    monkeypatch.setenv("NATSURL", "x")  # not the prefix
    monkeypatch.setenv("DATABASE_URL", "postgres://elsewhere")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownSettingWarning)
        assert BrokerSettings().batch_size == 3


@pytest.mark.parametrize("url", ["http://localhost:4222", "https://nats.example", "nats://a:4222,http://b:4222"])
def test_url_with_another_scheme_fails_before_connecting(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("NATS_URL", url)
    with pytest.raises(
        ValidationError, match=r"has the scheme https?://; NATS servers use nats://, tls://, ws:// or wss://"
    ):
        BrokerSettings()


# -- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "field", "message"),
    [
        ("NATS_BATCH_SIZE", "ten", "batch_size", "valid integer"),
        ("NATS_BATCH_SIZE", "0", "batch_size", "greater than 0"),
        ("NATS_CONCURRENCY", "-2", "concurrency", "greater than 0"),
        ("NATS_FETCH_WAIT", "soon", "fetch_wait", "valid number"),
        ("NATS_ACK_WAIT", "0", "ack_wait", "greater than 0"),
        ("NATS_MAX_DELIVER", "0", "max_deliver", "-1 for unlimited"),
        ("NATS_CONNECT_TIMEOUT", "-1", "connect_timeout", "greater than 0"),
        ("NATS_PUBLISH_TIMEOUT", "x", "publish_timeout", "valid number"),
        ("NATS_SHUTDOWN_TIMEOUT", "0", "shutdown_timeout", "greater than 0"),
        ("NATS_URL", " , ", "url", "names no server"),
        ("NATS_DEAD_LETTERS", "maybe", "dead_letters", "valid boolean"),
        ("NATS_DELIVER_POLICY", "first", "deliver_policy", "'all', 'new' or 'last'"),
        ("NATS_HANDLER_TIMEOUT", "0", "handler_timeout", "greater than 0"),
        ("NATS_STREAM_MISMATCH", "ignore", "stream_mismatch", "'error', 'warn' or 'update'"),
    ],
)
def test_invalid_values_fail_with_pydantic_errors(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    monkeypatch.setenv("NATS_TOKEN", TOKEN)
    with pytest.raises(ValidationError) as caught:
        BrokerSettings()
    [error] = caught.value.errors()
    assert error["loc"] == (name,)  # the variable to fix, not the field it sets
    assert str(caught.value).splitlines()[1] == name
    assert message in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_rules_beyond_the_settings_are_the_brokers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_FETCH_WAIT", "0.01")
    with pytest.raises(InvalidArgumentError, match=r"fetch_wait must be at least 0\.2"):
        BrokerSettings().broker()


@pytest.mark.parametrize("name", ["NATS_CREDS_FILE", "NATS_TLS_CA_FILE", "NATS_TLS_CERT_FILE", "NATS_TLS_KEY_FILE"])
def test_missing_file_names_the_variable_and_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere" / "file.pem"
    monkeypatch.setenv(name, str(missing))
    with pytest.raises(ValidationError, match=re.escape(f"{name}: no such file: {missing}")):
        BrokerSettings()


def test_a_directory_is_not_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NATS_CREDS_FILE", str(tmp_path))
    with pytest.raises(ValidationError, match="NATS_CREDS_FILE: no such file"):
        BrokerSettings()


def test_unreadable_file_names_the_variable_and_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    creds.chmod(0)
    # Tests run as root in CI, and root reads every file: refuse the permission check for this one path.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(creds) else real_access(path, mode))
    monkeypatch.setenv("NATS_CREDS_FILE", str(creds))
    with pytest.raises(ValidationError, match=re.escape(f"NATS_CREDS_FILE: file not readable: {creds}")):
        BrokerSettings()


def test_creds_file_is_passed_as_user_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text("not read by the settings")
    monkeypatch.setenv("NATS_CREDS_FILE", str(creds))
    assert BrokerSettings().connect_options() == {"user_credentials": str(creds)}


# -- secrets ---------------------------------------------------------------------------------------------------


def test_secrets_never_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", f"nats://{USER}:{PASSWORD}@a:4222,nats://{TOKEN}@b:4222")
    monkeypatch.setenv("NATS_TOKEN", TOKEN)
    monkeypatch.setenv("NATS_USER", USER)
    monkeypatch.setenv("NATS_PASSWORD", PASSWORD)
    settings = BrokerSettings()
    broker = settings.broker()
    texts = {
        "repr(settings)": repr(settings),
        "str(settings)": str(settings),
        "settings.model_dump_json(exclude={'url'})": settings.model_dump_json(exclude={"url"}),
        "repr(broker)": repr(broker),
    }
    for where, text in texts.items():
        for secret in (TOKEN, USER, PASSWORD):
            assert secret not in text, f"{secret!r} in {where}: {text}"
    assert "url='nats://***@a:4222, nats://***@b:4222'" in repr(settings)
    assert "token=SecretStr('**********')" in repr(settings)
    # What nats.connect gets is the real thing.
    options = settings.connect_options()
    assert (options["token"], options["user"], options["password"]) == (TOKEN, USER, PASSWORD)


def test_repr_shows_only_what_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_BATCH_SIZE", "4")
    assert repr(BrokerSettings()) == "BrokerSettings(batch_size=4)"


# -- TLS ---------------------------------------------------------------------------------------------------------


def test_ssl_context_from_a_ca_file(monkeypatch: pytest.MonkeyPatch, certs: dict[str, Path]) -> None:
    monkeypatch.setenv("NATS_TLS_CA_FILE", str(certs["cert"]))
    settings = BrokerSettings()
    context = settings.ssl_context()
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    subjects = [ca["subject"] for ca in context.get_ca_certs()]
    assert subjects == [((("commonName", "localhost"),),)]  # the given CA only, not the system's
    assert isinstance(settings.connect_options()["tls"], ssl.SSLContext)


@pytest.mark.parametrize("files", [("cert", "key"), ("both", None)])
def test_ssl_context_with_a_client_certificate(
    monkeypatch: pytest.MonkeyPatch, certs: dict[str, Path], files: tuple[str, str | None]
) -> None:
    cert, key = files
    monkeypatch.setenv("NATS_TLS_CA_FILE", str(certs["cert"]))
    monkeypatch.setenv("NATS_TLS_CERT_FILE", str(certs[cert]))
    if key is not None:
        monkeypatch.setenv("NATS_TLS_KEY_FILE", str(certs[key]))
    assert isinstance(BrokerSettings().ssl_context(), ssl.SSLContext)


def test_key_without_certificate_is_an_error(monkeypatch: pytest.MonkeyPatch, certs: dict[str, Path]) -> None:
    monkeypatch.setenv("NATS_TLS_KEY_FILE", str(certs["key"]))
    with pytest.raises(ValidationError, match="NATS_TLS_KEY_FILE needs NATS_TLS_CERT_FILE"):
        BrokerSettings()


@pytest.mark.parametrize("name", ["NATS_TLS_CA_FILE", "NATS_TLS_CERT_FILE"])
def test_unusable_tls_file_names_the_variable_and_path_not_the_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text(f"-----BEGIN CERTIFICATE-----\n{TOKEN}\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv(name, str(bogus))
    with pytest.raises(ValidationError) as caught:
        BrokerSettings()
    assert f"cannot load {name}={bogus}" in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_mismatched_key_names_both_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, certs: dict[str, Path]
) -> None:
    other_key = tmp_path / "other-key.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-out", str(other_key)], check=True, capture_output=True)
    monkeypatch.setenv("NATS_TLS_CERT_FILE", str(certs["cert"]))
    monkeypatch.setenv("NATS_TLS_KEY_FILE", str(other_key))
    with pytest.raises(ValidationError) as caught:
        BrokerSettings()
    assert f"NATS_TLS_CERT_FILE={certs['cert']}, NATS_TLS_KEY_FILE={other_key}" in str(caught.value)
    assert other_key.read_text().splitlines()[1] not in str(caught.value)


def test_encrypted_key_fails_instead_of_prompting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, certs: dict[str, Path]
) -> None:
    encrypted = tmp_path / "encrypted-key.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", str(certs["key"]), "-aes256", "-passout", "pass:hunter2", "-out", str(encrypted)],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("NATS_TLS_CERT_FILE", str(certs["cert"]))
    monkeypatch.setenv("NATS_TLS_KEY_FILE", str(encrypted))
    with pytest.raises(ValidationError, match=r"NATS_TLS_KEY_FILE=.*the key is encrypted"):
        BrokerSettings()


def test_tls_override_replaces_the_files(monkeypatch: pytest.MonkeyPatch, certs: dict[str, Path]) -> None:
    monkeypatch.setenv("NATS_TLS_CA_FILE", str(certs["cert"]))
    settings = BrokerSettings()
    mine = ssl.create_default_context()
    broker = settings.broker(tls=mine)
    assert broker._backend._connection._options["tls"] is mine  # type: ignore[attr-defined]


# -- on a real server ------------------------------------------------------------------------------------------


async def test_broker_from_settings_connects_and_publishes(
    monkeypatch: pytest.MonkeyPatch, nats_server: NatsServer, prefix: str
) -> None:
    monkeypatch.setenv("NATS_URL", nats_server.url)
    monkeypatch.setenv("NATS_NAME", "settings-test")
    monkeypatch.setenv("NATS_PUBLISH_TIMEOUT", "3")
    async with BrokerSettings().broker() as broker:
        assert broker.is_connected
        ack = await broker.publish(f"{prefix}.created", b"hello")
    assert (ack.stream, ack.seq, ack.duplicate) == (prefix.upper(), 1, False)


async def test_token_from_settings_is_used_and_never_shown(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    with NatsServer(args=["--auth", TOKEN]) as server:
        monkeypatch.setenv("NATS_URL", server.url)
        monkeypatch.setenv("NATS_TOKEN", TOKEN)
        async with BrokerSettings().broker() as broker:
            assert (await broker.publish(f"{prefix}.a", b"x")).seq == 1
        monkeypatch.setenv("NATS_TOKEN", f"wrong-{TOKEN}")
        monkeypatch.setenv("NATS_CONNECT_TIMEOUT", "2")
        with pytest.raises(ConnectError) as caught:
            await BrokerSettings().broker().connect()
        assert "Authorization Violation" in str(caught.value)
        assert TOKEN not in str(caught.value)


async def test_tls_from_settings_verifies_the_server(
    monkeypatch: pytest.MonkeyPatch, certs: dict[str, Path], prefix: str
) -> None:
    tls_args = ["--tls", "--tlscert", str(certs["cert"]), "--tlskey", str(certs["key"])]
    with NatsServer(args=tls_args) as server:
        monkeypatch.setenv("NATS_URL", server.url.replace("nats://", "tls://"))
        monkeypatch.setenv("NATS_CONNECT_TIMEOUT", "3")
        # Without the CA the self-signed certificate is refused...
        with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await BrokerSettings().broker().connect()
        # ...and with NATS_TLS_CA_FILE it is trusted.
        monkeypatch.setenv("NATS_TLS_CA_FILE", str(certs["cert"]))
        async with BrokerSettings().broker() as broker:
            assert (await broker.publish(f"{prefix}.a", b"x")).seq == 1


async def test_example_app_builds_its_broker_from_the_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, nats_server: NatsServer
) -> None:
    (tmp_path / ".env").write_text(f"NATS_URL={nats_server.url}\nNATS_BATCH_SIZE=3\n")
    app = create_app()
    async with LifespanManager(app) as manager:
        broker = manager._state["jetstream_broker"]
        assert isinstance(broker, JetStreamBroker)
        assert broker.is_connected
        assert broker.servers == [nats_server.url]
        assert broker.defaults.batch_size == 3


@pytest.mark.parametrize(("nats_url", "overrides"), [(None, {"servers": DEFAULT_NATS_URL}), ("nats://x:4222", {})])
def test_example_app_falls_back_to_its_default_url(
    monkeypatch: pytest.MonkeyPatch, nats_url: str | None, overrides: dict[str, str]
) -> None:
    calls: list[dict[str, Any]] = []
    build = BrokerSettings.broker

    def spy(self: BrokerSettings, **options: Any) -> JetStreamBroker:
        calls.append(options)
        return build(self, **options)

    monkeypatch.setattr(BrokerSettings, "broker", spy)
    if nats_url is not None:
        monkeypatch.setenv("NATS_URL", nats_url)
    create_app()
    assert calls == [overrides]
