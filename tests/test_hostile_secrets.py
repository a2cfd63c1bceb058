"""No secret in any text (issue 22, case 7): a server URL's user, password or token never reaches an error,
a log line, a ``repr``, a settings error, the AsyncAPI document or the CLI's output, whatever characters
the password holds.

Every password below is ``<LEFT><c><RIGHT>`` for one character ``c`` that URL parsers treat specially; the
test checks that neither half (nor the user name) shows anywhere.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import ClassVar

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from jetstream_fastapi import BrokerSettings, ConnectError, InvalidArgumentError, JetStreamBroker
from jetstream_fastapi.backends.jetstream.connection import Redactor
from jetstream_fastapi.cli import main
from jetstream_fastapi.core.redaction import redact, redact_url, url_secrets
from jetstream_fastapi.integration.asyncapi import asyncapi_document
from jetstream_fastapi.integration.health import check_readiness

USER = "usr9Alice"
LEFT, RIGHT = "lft9Kq", "rgt7Qz"
SPECIAL = "/@:?#+="
PASSWORDS = [f"{LEFT}{c}{RIGHT}" for c in SPECIAL] + [f"{LEFT}/@:?#+={RIGHT}", f"{LEFT}@{RIGHT}@x"]
HIDDEN = (USER, LEFT, RIGHT)
# A URL nats-py can use as written: its user info holds no '/', '?' or '#' (nats-py reads up to the first
# of them as the host, and does not percent-decode).
USABLE = [p for p in PASSWORDS if not set(p) & set("/?#")]
UNUSABLE = [p for p in PASSWORDS if set(p) & set("/?#")]


def assert_hidden(text: str) -> None:
    for secret in HIDDEN:
        assert secret not in text, text


def url(password: str, host: str = "nats.example:4222", scheme: str = "nats://") -> str:
    return f"{scheme}{USER}:{password}@{host}"


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("scheme", ["nats://", "tls://", ""])
def test_redact_url_hides_any_user_info(password: str, scheme: str) -> None:
    shown = redact_url(url(password, scheme=scheme))
    assert shown == f"{scheme}***@nats.example:4222"


@pytest.mark.parametrize("password", PASSWORDS)
def test_redact_hides_user_info_of_every_url_in_a_text(password: str) -> None:
    text = (
        f"could not connect to {url(password, 'a:4222')},{url(password, 'b:4222', 'tls://')} "
        f"and 'nats://tok3nSecret9@c:4222'; see nats://d:4222 or mail ops@example.com"
    )
    shown = redact(text)
    assert_hidden(shown)
    assert "tok3nSecret9" not in shown
    assert shown == (
        "could not connect to nats://***@a:4222,tls://***@b:4222 and 'nats://***@c:4222'; "
        "see nats://d:4222 or mail ops@example.com"
    )


def test_redact_hides_known_secrets_anywhere() -> None:
    shown = redact("user usr9Alice refused, password lft9Kq", ["usr9Alice", "lft9Kq"])
    assert shown == "user *** refused, password ***"


@pytest.mark.parametrize("password", PASSWORDS)
def test_the_redactor_of_a_connection_hides_the_password_in_free_text(password: str) -> None:
    redactor = Redactor([url(password)], {})
    assert_hidden(redactor(f"Authorization Violation for {USER} with {password}"))


@pytest.mark.parametrize("password", UNUSABLE)
def test_a_password_nats_py_cannot_read_from_a_url_is_refused_unseen(password: str) -> None:
    with pytest.raises(InvalidArgumentError, match="user= and password=") as caught:
        JetStreamBroker(url(password))
    assert_hidden(str(caught.value))
    with pytest.raises(ValidationError) as invalid:
        BrokerSettings(url=f"{url(password, 'a:4222')}, {url(password, 'b:4222', 'tls://')}")
    assert_hidden(str(invalid.value))


@pytest.mark.parametrize("password", USABLE)
def test_broker_and_settings_reprs_hold_no_secret(password: str) -> None:
    assert_hidden(repr(JetStreamBroker(url(password))))
    settings = BrokerSettings(url=f"{url(password, 'a:4222')}, {url(password, 'b:4222', 'tls://')}")
    assert_hidden(repr(settings))
    assert_hidden(repr(settings.broker()))


def test_a_token_url_is_redacted() -> None:
    broker = JetStreamBroker("nats://tok3nSecret9@nats.example:4222")
    assert "tok3nSecret9" not in repr(broker)
    assert "tok3nSecret9" not in repr(BrokerSettings(url="nats://tok3nSecret9@nats.example:4222"))


@pytest.mark.parametrize("password", USABLE)
async def test_connect_errors_and_logs_hold_no_secret(password: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    broker = JetStreamBroker(url(password, "127.0.0.1:1"), connect_timeout=0.5)
    with pytest.raises(ConnectError) as caught:
        await broker.connect()
    assert "127.0.0.1:1" in str(caught.value)
    assert_hidden(str(caught.value))
    assert_hidden(caplog.text)


@pytest.mark.parametrize("password", PASSWORDS)
def test_the_asyncapi_document_holds_no_secret(password: str) -> None:
    servers = [url(password, "a:4222"), url(password, "b:4443", "tls://"), f"{USER}:{password}@c:4222"]
    document = asyncapi_document(servers=servers)
    assert_hidden(json.dumps(document))
    assert document["servers"] == {
        "nats": {"host": "a:4222", "protocol": "nats"},
        "nats1": {"host": "b:4443", "protocol": "nats"},
        "nats2": {"host": "c:4222", "protocol": "nats"},
    }


@pytest.mark.parametrize("password", [USABLE[0], UNUSABLE[0]])
def test_the_cli_prints_no_secret(password: str) -> None:
    result = CliRunner().invoke(main, ["--server", url(password, "127.0.0.1:1"), "--timeout", "0.5", "streams"])
    assert result.exit_code == 1, result.output
    assert_hidden(result.output)


def test_a_password_holding_a_comma_is_hidden_although_nats_url_is_split_at_commas() -> None:
    value = f"nats://{USER}:{LEFT},{RIGHT}@a:4222"
    assert {USER, LEFT, RIGHT} <= url_secrets(value)
    with pytest.raises(ValidationError) as caught:
        BrokerSettings(url=value)  # two pieces, "nats://user:left" and "right@a:4222": not a URL
    assert_hidden(str(caught.value))
    assert_hidden(repr(JetStreamBroker(value)))  # one URL here: nats-py reads it whole


class _Failing:
    """A subscription whose last error quotes a server URL with its password (as a nats-py error may)."""

    subject, queue, state, in_flight, active = "orders", "q", "running", 0, None
    counters: ClassVar[Counter[str]] = Counter()
    last_error = f"NoServersError: nats: no servers available ({url(PASSWORDS[0])})"


class _Broker:
    is_connected = True
    subscriptions = (_Failing(),)

    async def ping(self, timeout: float = 1.0) -> bool:
        return True


async def test_readiness_holds_no_secret() -> None:
    readiness = await check_readiness(_Broker())  # type: ignore[arg-type]
    assert (
        readiness.consumers[0].last_error == "NoServersError: nats: no servers available (nats://***@nats.example:4222)"
    )
