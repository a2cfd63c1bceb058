"""Fault injection on one real nats-server (issue #3, item 6): TLS and authentication (g), a stalled
server (f), and a server killed and restarted on the same store (a).

Every test counts what it published, what the server acknowledged (PubAck), what the handlers processed,
how many deliveries were duplicates, and how many acknowledged messages were never processed (lost), prints
those counts (run with ``-s`` to see them) and asserts the guarantee. Waits are on counters and events,
each with a timeout; nothing sleeps to wait for work.

Certificates and nkeys are made by the test with the ``openssl`` CLI (``cryptography`` and ``nkeys`` are not
dependencies of the project); when the ``nkeys`` package (which nats-py signs the server's nonce with) is not
installed, an openssl-backed stand-in takes its place, and the real server checks the Ed25519 signature.
The servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import os
import shutil
import ssl
import subprocess
import sys
import time
import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jetstream_fastapi import (
    ConnectError,
    JetStreamBroker,
    Message,
    PublishError,
    PublishTimeoutError,
)
from jetstream_fastapi.server import NatsServer
from tests.conftest import FAST_BACKOFF, WAIT, eventually


def need_openssl() -> None:
    if shutil.which("openssl") is None:
        pytest.fail(
            "the openssl CLI makes the test's certificates and keys: install it (Debian: apt-get install openssl)"
        )


# -- counting ---------------------------------------------------------------------------------------


class Tally:
    """What one fault test published, got acknowledged and processed; awaitable on any change."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.published: list[str] = []
        self.acked: set[str] = set()
        self.duplicate_acks = 0  # PubAck(duplicate=True): a retry whose earlier attempt had been stored
        self.timeouts = 0  # publishes that got no PubAck in time (retried with the same msg id)
        self.errors = 0  # other publish failures (retried)
        self.last_error = ""
        self.deliveries: Counter[str] = Counter()
        self.acked_at: dict[str, float] = {}  # msg id -> when its PubAck came (monotonic)
        self.processed_at: dict[str, float] = {}  # msg id -> when a handler first saw it
        self._changed = asyncio.Condition()

    @property
    def processed(self) -> set[str]:
        return set(self.deliveries)

    @property
    def duplicates(self) -> int:
        """Deliveries beyond the first of each message."""
        return sum(self.deliveries.values()) - len(self.deliveries)

    @property
    def lost(self) -> set[str]:
        """Acknowledged messages no handler has seen."""
        return self.acked - self.processed

    async def changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def handler(self, msg: Message) -> None:
        msg_id = msg.body.decode()
        self.deliveries[msg_id] += 1
        self.processed_at.setdefault(msg_id, time.monotonic())
        await self.changed()

    def acknowledged(self, msg_id: str, duplicate: bool) -> None:
        self.acked.add(msg_id)
        self.acked_at[msg_id] = time.monotonic()
        self.duplicate_acks += duplicate

    def outage(self) -> str:
        """The longest silence between consecutive PubAcks, and between consecutive first processings: with
        traffic flowing before and after the fault, that is how long the fault stopped each side."""

        def longest_gap(times: Iterable[float]) -> float:
            ordered = sorted(times)
            return max((b - a for a, b in itertools.pairwise(ordered)), default=0.0)

        return (
            f"publishing stopped for {longest_gap(self.acked_at.values()):.2f}s, "
            f"consuming for {longest_gap(self.processed_at.values()):.2f}s"
        )

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until ``predicate()`` holds, re-checked on every count change; fail after ``timeout``."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except TimeoutError:
                raise AssertionError(f"{self.name}: {what} not reached within {timeout}s: {self.summary()}") from None

    def summary(self) -> str:
        return (
            f"published={len(self.published)} acked={len(self.acked)} processed={len(self.processed)} "
            f"duplicates={self.duplicates} lost={len(self.lost)} "
            f"(publish timeouts={self.timeouts}, other publish errors={self.errors}, "
            f"duplicate PubAcks={self.duplicate_acks}{', last error: ' + self.last_error if self.last_error else ''})"
        )

    def report(self, extra: str = "") -> None:
        print(f"\n[{self.name}] {self.summary()}{' ' + extra if extra else ''}")


async def publish_continuously(
    broker: JetStreamBroker, subject: str, tally: Tally, stop: asyncio.Event, tag: str
) -> None:
    """Publish ``<tag>-1``, ``<tag>-2``, ... one after the other until ``stop``; an id without a PubAck is
    published again with the same msg id (the application's side of at-least-once publishing)."""
    number = 0
    while not stop.is_set():
        number += 1
        msg_id = f"{tag}-{number}"
        tally.published.append(msg_id)
        while not stop.is_set():
            try:
                ack = await broker.publish(subject, msg_id.encode(), msg_id=msg_id)
            except PublishTimeoutError:
                tally.timeouts += 1
                continue
            except (PublishError, ConnectionError, OSError) as error:
                tally.errors += 1
                tally.last_error = repr(error)
                await asyncio.sleep(0.05)  # the producer's retry pause, not a wait for the test
                continue
            tally.acknowledged(msg_id, ack.duplicate)
            await tally.changed()
            break


async def stop_publisher(publisher: asyncio.Task[None] | None) -> None:
    """Cleanup after a failed test: cancel the publisher before its broker disconnects."""
    if publisher is not None and not publisher.done():
        publisher.cancel()
    if publisher is not None:
        with contextlib.suppress(BaseException):
            await publisher


# -- TLS --------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> bytes:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, check=False)
    if done.returncode:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


# A CA and a server certificate as a real PKI issues them: Python 3.13's default context verifies strictly
# (VERIFY_X509_STRICT) and refuses a CA without a key usage extension ("CA cert does not include key usage
# extension") and a leaf without an authority key identifier.
_CA_CONFIG = """\
[req]
distinguished_name = dn
x509_extensions = ca
prompt = no
[dn]
CN = test CA
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""
_SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throw-away CA and a server certificate it signed for 127.0.0.1 and localhost."""
    need_openssl()
    d = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    (d / "ca.cnf").write_text(_CA_CONFIG)
    _openssl("req", "-x509", "-config", "ca.cnf", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "server.cnf").write_text(_SERVER_EXTENSIONS)
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.cnf", cwd=d,
    )  # fmt: skip
    return TlsFiles(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")


def server_with(conf: str, directory: Path) -> NatsServer:
    """A server (not started yet) running with ``conf`` as its config file, written into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "server.conf"
    path.write_text(conf)
    return NatsServer(args=["-c", str(path)])


async def round_trip(broker: JetStreamBroker, subject: str, tally: Tally, count: int = 20) -> None:
    """Consume ``subject`` with a durable and publish ``count`` messages; wait until each was processed."""
    await broker.subscribe(subject, tally.handler, queue="w")
    for number in range(count):
        msg_id = f"{tally.name}-{number}"
        tally.published.append(msg_id)
        ack = await broker.publish(subject, msg_id.encode(), msg_id=msg_id)
        assert not ack.duplicate
        tally.acknowledged(msg_id, ack.duplicate)
    await tally.until(lambda: not tally.lost, WAIT, "every message processed")


async def test_tls_with_a_test_ca(tls_files: TlsFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    conf = f'tls {{ cert_file: "{tls_files.cert}", key_file: "{tls_files.key}" }}\n'
    with server_with(conf, tmp_path) as server:
        trusting = ssl.create_default_context(cafile=str(tls_files.ca))
        broker = JetStreamBroker(server.url, tls=trusting, backoff=FAST_BACKOFF, fetch_wait=1.0)
        await broker.connect()
        tally = Tally("g: TLS, CA trusted")
        try:
            await round_trip(broker, "tls.work", tally)
        finally:
            await broker.disconnect()
        tally.report()
        assert not tally.lost

        # The same server without trusting its CA: the system's CAs only, or no TLS options at all (nats-py
        # then upgrades with a default context when the server requires TLS).
        untrusting: list[tuple[str, dict[str, Any]]] = [
            ("system CAs", {"tls": ssl.create_default_context()}),
            ("no tls option", {}),
        ]
        for label, options in untrusting:
            refused = JetStreamBroker(server.url, connect_timeout=5, **options)
            started = time.monotonic()
            with pytest.raises(ConnectError) as error:
                await refused.connect()
            elapsed = time.monotonic() - started
            print(f"[g: TLS, CA not trusted ({label})] ConnectError after {elapsed:.3f}s: {error.value}")
            assert "CERTIFICATE_VERIFY_FAILED" in str(error.value)
            assert elapsed < 1.0, f"a certificate that cannot verify must fail at once, took {elapsed:.2f}s"
            assert not refused.is_connected


# -- authentication ---------------------------------------------------------------------------------

_B32 = base64.b32encode
_SEED_PREFIX = 18 << 3  # nkeys: 'S'
_USER_PREFIX = 20 << 3  # nkeys: 'U'
_ED25519_PKCS8 = bytes.fromhex("302e020100300506032b657004220420")


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the checksum nkeys append."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _nkey_encode(raw: bytes) -> str:
    return _B32(raw + _crc16(raw).to_bytes(2, "little")).decode().rstrip("=")


def _nkey_decode(text: str) -> bytes:
    data = base64.b32decode(text + "=" * (-len(text) % 8))
    raw, crc = data[:-2], int.from_bytes(data[-2:], "little")
    if _crc16(raw) != crc:
        raise ValueError("nkey checksum mismatch")
    return raw


class OpensslUserKey:
    """An Ed25519 nkey user key pair signed with the openssl CLI: what ``nkeys.KeyPair`` offers nats-py."""

    def __init__(self, raw_seed: bytes, workdir: Path) -> None:
        self._der = workdir / f"key-{os.urandom(4).hex()}.der"
        self._der.write_bytes(_ED25519_PKCS8 + raw_seed)
        public = _openssl("pkey", "-inform", "DER", "-in", str(self._der), "-pubout", "-outform", "DER", cwd=workdir)
        self.public_key = _nkey_encode(bytes([_USER_PREFIX]) + public[-32:]).encode()
        self.seed = _nkey_encode(
            bytes([_SEED_PREFIX | (_USER_PREFIX >> 5), (_USER_PREFIX & 31) << 3]) + raw_seed
        ).encode()
        self._workdir = workdir

    @classmethod
    def from_seed(cls, seed: bytes | bytearray, workdir: Path) -> OpensslUserKey:
        raw = _nkey_decode(bytes(seed).decode())
        if raw[0] != _SEED_PREFIX | (_USER_PREFIX >> 5):
            raise ValueError("not a user seed")
        return cls(raw[2:], workdir)

    def sign(self, data: bytes) -> bytes:
        nonce = self._der.with_suffix(".nonce")  # Ed25519 signs in one shot: openssl wants a file, not a pipe
        nonce.write_bytes(data)
        try:
            return _openssl(
                "pkeyutl", "-sign", "-inkey", str(self._der), "-keyform", "DER", "-rawin", "-in", str(nonce),
                cwd=self._workdir,
            )  # fmt: skip
        finally:
            nonce.unlink()

    def wipe(self) -> None:
        self._der.unlink(missing_ok=True)


def new_user_nkey(workdir: Path) -> tuple[str, str]:
    """A fresh user nkey: (seed ``SU...``, public key ``U...``)."""
    key = OpensslUserKey(os.urandom(32), workdir)
    try:
        return key.seed.decode(), key.public_key.decode()
    finally:
        key.wipe()


@pytest.fixture
def nkeys_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nats-py signs the server's nonce with the ``nkeys`` package; without it, an openssl stand-in."""
    try:
        import nkeys  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        shim = types.ModuleType("nkeys")
        shim.from_seed = lambda seed: OpensslUserKey.from_seed(seed, tmp_path)  # type: ignore[attr-defined]
        shim.KeyPair = OpensslUserKey  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "nkeys", shim)


@dataclass
class AuthCase:
    name: str
    conf: str
    right: dict[str, Any]
    wrong: dict[str, Any]
    secrets: list[str] = field(default_factory=list)


@pytest.fixture(params=["user_password", "token", "nkey"])
def auth_case(request: pytest.FixtureRequest, tmp_path: Path) -> AuthCase:
    right_secret, wrong_secret = "r1ght-" + os.urandom(6).hex(), "wr0ng-" + os.urandom(6).hex()
    if request.param == "user_password":
        return AuthCase(
            "user/password",
            f'authorization {{ user: "svc", password: "{right_secret}" }}\n',
            {"user": "svc", "password": right_secret},
            {"user": "svc", "password": wrong_secret},
            [right_secret, wrong_secret],
        )
    if request.param == "token":
        return AuthCase(
            "token",
            f'authorization {{ token: "{right_secret}" }}\n',
            {"token": right_secret},
            {"token": wrong_secret},
            [right_secret, wrong_secret],
        )
    need_openssl()
    request.getfixturevalue("nkeys_module")
    right_seed, right_public = new_user_nkey(tmp_path)
    wrong_seed, _ = new_user_nkey(tmp_path)  # a valid key the server does not know
    return AuthCase(
        "nkey",
        f'authorization {{ users: [ {{ nkey: "{right_public}" }} ] }}\n',
        {"nkeys_seed_str": right_seed},
        {"nkeys_seed_str": wrong_seed},
        [right_seed, wrong_seed],
    )


def assert_no_secret(case: AuthCase, texts: dict[str, str]) -> None:
    for where, text in texts.items():
        for secret in case.secrets:
            assert secret not in text, f"a {case.name} secret shows in {where}"


async def test_authentication_right_and_wrong_credentials(
    auth_case: AuthCase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="jetstream_fastapi")
    with server_with(auth_case.conf, tmp_path) as server:
        good = JetStreamBroker(server.url, backoff=FAST_BACKOFF, fetch_wait=1.0, **auth_case.right)
        await good.connect()
        tally = Tally(f"g: auth {auth_case.name}, right credentials")
        try:
            await round_trip(good, "auth.work", tally)
            good_repr = repr(good)
        finally:
            await good.disconnect()
        tally.report()
        assert not tally.lost

        # connect_timeout 5 s: a refusal must not wait it out (nats-py alone retries until the timeout).
        bad = JetStreamBroker(server.url, connect_timeout=5, **auth_case.wrong)
        started = time.monotonic()
        with pytest.raises(ConnectError) as error:
            await bad.connect()
        elapsed = time.monotonic() - started
        print(f"[g: auth {auth_case.name}, wrong credentials] ConnectError after {elapsed:.3f}s: {error.value}")
        assert "Authorization Violation" in str(error.value)
        assert elapsed < 1.0, f"refused credentials must fail at once, took {elapsed:.2f}s"
        assert not bad.is_connected
    assert_no_secret(
        auth_case,
        {
            "repr(broker)": good_repr + repr(good) + repr(bad),
            "the ConnectError": str(error.value) + repr(error.value),
            "the logs": caplog.text + "".join(record.getMessage() for record in caplog.records),
        },
    )


async def test_refusal_fails_fast_only_once_every_server_refused(tmp_path: Path) -> None:
    """Two servers with different passwords: refused by the first, the broker still connects to the second;
    refused by both, it fails at once."""
    first = server_with('authorization { user: "svc", password: "pw-of-first" }\n', tmp_path / "a")
    second = server_with('authorization { user: "svc", password: "pw-of-second" }\n', tmp_path / "b")
    with first, second:
        pool = [first.url, second.url]
        broker = JetStreamBroker(pool, user="svc", password="pw-of-second", dont_randomize=True, connect_timeout=5)
        started = time.monotonic()
        await broker.connect()
        try:
            assert (await broker.publish("pool.work", b"x")).seq == 1
        finally:
            await broker.disconnect()
        took = time.monotonic() - started
        print(f"\n[g: auth pool] refused by the first server, connected to the second in {took:.3f}s")
        nobody = JetStreamBroker(pool, user="svc", password="pw-of-neither", connect_timeout=5)
        started = time.monotonic()
        with pytest.raises(ConnectError, match="Authorization Violation"):
            await nobody.connect()
        elapsed = time.monotonic() - started
        print(f"[g: auth pool] refused by both servers: ConnectError after {elapsed:.3f}s")
        assert elapsed < 1.0


# -- a stalled server -------------------------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


async def test_stalled_server_resumes_and_loses_no_acknowledged_message(own_server: NatsServer) -> None:
    # Pings every second, stale after two unanswered: a SIGSTOPped server is noticed within ~3 s.
    broker = JetStreamBroker(
        own_server.url,
        ping_interval=1,
        max_outstanding_pings=2,
        reconnect_time_wait=0.25,
        publish_timeout=3.0,
        ack_wait=2.0,  # deliveries and acks lost with the stale connection come back quickly
        fetch_wait=1.0,
        backoff=FAST_BACKOFF,
    )
    await broker.connect()
    tally = Tally("f: server stalled (SIGSTOP) past the ping interval, then resumed")
    stop = asyncio.Event()
    publisher: asyncio.Task[None] | None = None
    try:
        await broker.subscribe("stall.work", tally.handler, queue="w")
        publisher = asyncio.create_task(publish_continuously(broker, "stall.work", tally, stop, "s"))
        await tally.until(lambda: len(tally.acked) >= 100 and len(tally.processed) >= 50, WAIT, "traffic")

        own_server.pause()
        paused_at = time.monotonic()
        try:

            async def noticed() -> None:
                assert not broker.is_connected

            await eventually(noticed, timeout=10)
            stalled_for = time.monotonic() - paused_at
            acked_during_stall = len(tally.acked)
        finally:
            own_server.resume()

        async def back() -> None:
            assert broker.is_connected

        await eventually(back, timeout=10)
        reconnected_after = time.monotonic() - paused_at
        mark = len(tally.acked)
        await tally.until(lambda: len(tally.acked) >= mark + 100, 10, "publishing after the resume")
        stop.set()
        await asyncio.wait_for(publisher, 10)
        await tally.until(lambda: not tally.lost, 15, "every acknowledged message processed")
        await broker.wait_until_idle(10)
    finally:
        stop.set()
        await stop_publisher(publisher)
        await broker.disconnect()
    tally.report(
        f"stale connection noticed {stalled_for:.2f}s after the pause (then resumed), reconnected after "
        f"{reconnected_after:.2f}s; {tally.outage()}"
    )
    assert acked_during_stall >= 100
    assert not tally.lost


# -- a crashed server -------------------------------------------------------------------------------


async def test_killed_server_restarts_on_its_store_and_loses_no_acknowledged_message(own_server: NatsServer) -> None:
    broker = JetStreamBroker(
        own_server.url,
        reconnect_time_wait=0.25,
        publish_timeout=3.0,
        ack_wait=2.0,  # deliveries whose acks died with the server come back quickly
        fetch_wait=1.0,
        backoff=FAST_BACKOFF,
    )
    await broker.connect()
    tally = Tally("a: server SIGKILLed mid-traffic, restarted on the same store")
    stop = asyncio.Event()
    publisher: asyncio.Task[None] | None = None
    try:
        await broker.subscribe("crash.work", tally.handler, queue="w")
        publisher = asyncio.create_task(publish_continuously(broker, "crash.work", tally, stop, "k"))
        await tally.until(lambda: len(tally.acked) >= 200 and len(tally.processed) >= 100, WAIT, "traffic")

        await asyncio.to_thread(own_server.kill)
        killed_at = time.monotonic()
        acked_at_kill, processed_at_kill = len(tally.acked), len(tally.processed)

        async def noticed() -> None:
            assert not broker.is_connected

        await eventually(noticed, timeout=WAIT)
        await asyncio.to_thread(own_server.start)
        mark = len(tally.acked)
        await tally.until(lambda: len(tally.acked) >= mark + 100, 10, "publishing after the restart")
        resumed_after = time.monotonic() - killed_at
        stop.set()
        await asyncio.wait_for(publisher, 10)
        await tally.until(lambda: not tally.lost, 15, "every acknowledged message processed")
        await broker.wait_until_idle(10)
    finally:
        stop.set()
        await stop_publisher(publisher)
        await broker.disconnect()
    tally.report(
        f"before the kill: acked={acked_at_kill} processed={processed_at_kill}; {tally.outage()}; "
        f"100 more acked {resumed_after:.2f}s after the kill"
    )
    assert not tally.lost
