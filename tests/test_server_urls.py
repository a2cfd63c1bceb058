"""Server URLs are checked when the broker is made: a wrong scheme is a clear error, not a DNS failure at connect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jetstream_fastapi import InvalidArgumentError, JetStreamBroker

ROOT = Path(__file__).resolve().parent.parent
SCHEMES = "nats://, tls://, ws:// or wss://"


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ("http://localhost:4222", f"has the scheme http://; NATS servers use {SCHEMES}"),
        ("https://nats.example", f"has the scheme https://; NATS servers use {SCHEMES}"),
        ("nats+tls://nats.example", "has the scheme nats+tls://"),
        ("NATS://localhost:4222", "has the scheme NATS://"),  # nats-py matches schemes in lower case only
        (["nats://a:4222", "http://b:4222"], "'http://b:4222' has the scheme http://"),
        ("nats://", "names no host"),
        ("nats://localhost:port", "has an invalid port"),
        (" ", "must be a non-empty string"),
        (["ws://a:8080", "nats://b:4222"], "mix WebSocket"),
    ],
)
def test_invalid_server_urls_fail_when_the_broker_is_made(servers: str | list[str], message: str) -> None:
    # Nothing is connected, so nothing could have reached the network: the constructor raised.
    with pytest.raises(InvalidArgumentError, match=message.replace("+", r"\+").replace("(", r"\(")):
        JetStreamBroker(servers)


@pytest.mark.parametrize(
    "servers",
    [
        "nats://localhost:4222",
        "tls://nats.example:4443",
        "ws://localhost:8080",
        "wss://nats.example/socket",
        "localhost:4222",  # nats-py assumes nats://
        "localhost",  # ... and port 4222
        "nats://user:pass@localhost:4222",
        "nats://[::1]:4222",
        ["nats://a:4222", "tls://b:4222"],
    ],
)
def test_valid_server_urls_are_accepted(servers: str | list[str]) -> None:
    JetStreamBroker(servers)


def test_user_info_of_a_bad_url_is_not_shown() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        JetStreamBroker("http://alice:s3cret-pw@localhost:4222")
    assert "s3cret-pw" not in str(caught.value)
    assert "alice" not in str(caught.value)


def test_example_app_exits_with_a_clear_error_for_an_http_url() -> None:
    env = {**os.environ, "NATS_URL": "http://user:secret-pw@127.0.0.1:4222", "PORT": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "example_app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"has the scheme http://; NATS servers use {SCHEMES}" in output
    assert "Traceback" not in output
    assert "gaierror" not in output
    assert "secret-pw" not in output
