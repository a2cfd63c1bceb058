"""The NATS connection: reconnect forever, log its events, and keep secrets out of every text.

nats-py gives up reconnecting after about two minutes by default and closes the client for good; a
service should instead keep trying until it is told to stop, so ``max_reconnect_attempts`` defaults to
-1 here. Connect options (credentials, TLS, token, user and password, ...) are passed through to
``nats.connect`` unchanged; their secret values are replaced by ``***`` in logs, ``repr`` and errors.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from nats.aio.client import Client as NATS

from ...core.redaction import redact, redact_url, split_url, url_secrets
from ...errors import ConnectError, InvalidArgumentError

__all__ = ["Connection", "Redactor", "check_server_url", "check_server_urls", "redact_url"]

logger = logging.getLogger("jetstream_fastapi")

_SECRET_OPTIONS = ("password", "token", "nkeys_seed_str", "user")
_OWN_CALLBACKS = ("error_cb", "disconnected_cb", "reconnected_cb", "closed_cb")
_SCHEMES = ("nats", "tls", "ws", "wss")
_VALID = "nats://, tls://, ws:// or wss://"


def check_server_url(url: str) -> None:
    """Raise :class:`InvalidArgumentError` unless nats-py can connect to ``url``.

    Valid: ``nats://``, ``tls://``, ``ws://`` and ``wss://`` URLs, and a bare ``host`` or ``host:port``
    (nats-py assumes ``nats://`` and port 4222). Anything else fails here, before any network call:
    nats-py would prefix ``http://host:4222`` with ``nats://`` and report a DNS failure for the host "http".
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgumentError(f"a server URL must be a non-empty string, got {url!r}")
    scheme, separator, _ = url.partition("://")
    shown = redact_url(url)
    if separator and scheme not in _SCHEMES:
        raise InvalidArgumentError(f"server URL {shown!r} has the scheme {scheme}://; NATS servers use {_VALID}")
    if set(split_url(url)[1]) & set("/?#"):
        # nats-py reads the host up to the first of them (urlparse) and does not percent-decode: such a
        # password cannot be written in a URL at all.
        raise InvalidArgumentError(
            f"server URL {shown!r}: its user info holds '/', '?' or '#', which nats-py cannot read from a URL; "
            "pass the credentials as user= and password= (or token=) instead (NATS_USER, NATS_PASSWORD, NATS_TOKEN)"
        )
    parts = urlsplit(url if separator else f"nats://{url}")
    try:
        parts.port  # noqa: B018  # parsing the port is the check
    except ValueError:
        raise InvalidArgumentError(f"server URL {shown!r} has an invalid port") from None
    if not parts.hostname:
        raise InvalidArgumentError(f"server URL {shown!r} names no host; use e.g. nats://localhost:4222")


def check_server_urls(servers: Sequence[str]) -> None:
    """:func:`check_server_url` for each, and no mix of WebSocket and plain URLs (nats-py refuses one)."""
    for url in servers:
        check_server_url(url)
    if len({url.startswith(("ws://", "wss://")) for url in servers}) > 1:
        shown = ", ".join(map(redact_url, servers))
        raise InvalidArgumentError(f"servers mix WebSocket (ws://, wss://) and nats://, tls:// URLs: {shown}")


def _is_auth_error(error: BaseException | None) -> bool:
    return error is not None and (
        "Authorization Violation" in str(error) or type(error).__name__ == "AuthorizationError"
    )


def _is_refusal(error: BaseException | None) -> bool:
    """An answer that retrying cannot change: credentials refused, or a certificate that does not verify."""
    return _is_auth_error(error) or isinstance(error, ssl.SSLCertVerificationError)


class _Refused(Exception):
    """Every server refused the first connect (see :meth:`Connection.open`)."""


class Redactor:
    """Replaces the secrets of one connection (its URLs' user info, its ``password``, ``token``, ``user`` and
    ``nkeys_seed_str`` options) and the user info of any URL in a text with ``***``."""

    def __init__(self, servers: Sequence[str], options: Mapping[str, Any]) -> None:
        secrets = url_secrets(servers)
        secrets.update(str(options[key]) for key in _SECRET_OPTIONS if isinstance(options.get(key), str))
        self._secrets = frozenset(secrets)

    def __call__(self, text: str) -> str:
        return redact(text, self._secrets)


class Connection:
    """Opens and closes one nats-py client, forwarding connection events to ``listener`` callbacks."""

    def __init__(
        self,
        servers: Sequence[str],
        *,
        connect_timeout: float,
        options: Mapping[str, Any],
        on_disconnected: Callable[[], None],
        on_reconnected: Callable[[], None],
    ) -> None:
        clashing = set(options) & {"servers", *_OWN_CALLBACKS}
        if clashing:
            raise InvalidArgumentError(f"connect options {sorted(clashing)} are set by the broker itself")
        check_server_urls(servers)
        self.servers = list(servers)
        self.connect_timeout = connect_timeout
        self._options = {"max_reconnect_attempts": -1, "reconnect_time_wait": 2, **options}
        self.redact = Redactor(self.servers, options)
        self._on_disconnected = on_disconnected
        self._on_reconnected = on_reconnected
        self._last_error: BaseException | None = None
        self._refusals = 0
        self._refused: asyncio.Event | None = None  # set while a first connect runs
        self.closing = False
        """Set by the broker before it drains, so the expected disconnect is not reported as a fault."""

    async def open(self) -> NATS:
        """Connect within ``connect_timeout`` or raise :class:`ConnectError` with a clear, secret-free reason.

        nats-py retries a refused first connect (wrong credentials, untrusted certificate) until the timeout
        like any other failure; here it fails at once when every server has refused it that way.
        """
        nc = NATS()
        self._last_error = None
        self._refusals = 0
        self._refused = asyncio.Event()
        self.closing = False
        # nats-py's own attempt timeout must fit in ours, or a black-holed address eats the whole budget.
        attempt_timeout = max(1, min(int(self.connect_timeout), int(self._options.get("connect_timeout", 2))))
        # Every subject reaching this connection is checked by us first (publish, subscribe), comes from the
        # server (ack replies) or is built from checked names, so nats-py's own regex per publish (about
        # 0.5 µs, on every ack) is skipped.
        options = {"skip_subject_validation": True, **self._options, "connect_timeout": attempt_timeout}
        try:
            await asyncio.wait_for(self._connect_unless_refused(nc, options), timeout=self.connect_timeout)
        except BaseException as error:
            self.closing = True  # nats-py reports a failed first connect as a disconnect: not a reconnect
            await self.abandon(nc)
            if isinstance(error, asyncio.CancelledError):
                raise
            where = self.redact(", ".join(map(redact_url, self.servers)))
            if isinstance(error, _Refused):
                reason = self.describe(self._last_error or error)
                raise ConnectError(f"could not connect to NATS at {where}: refused, not retried: {reason}") from None
            cause = self._last_error if isinstance(error, TimeoutError) and self._last_error else error
            raise ConnectError(
                f"could not connect to NATS at {where} within {self.connect_timeout:g}s: {self.describe(cause)}"
            ) from None
        finally:
            self._refused = None
        logger.info(
            "connected to NATS at %s", self.redact(redact_url(nc.connected_url.geturl() if nc.connected_url else ""))
        )
        return nc

    async def _connect_unless_refused(self, nc: NATS, options: Mapping[str, Any]) -> None:
        """``nc.connect``, abandoned with :class:`_Refused` as soon as :meth:`_error` has seen every server refuse."""
        assert self._refused is not None
        connecting = asyncio.ensure_future(
            nc.connect(
                servers=self.servers,
                error_cb=self._error,
                disconnected_cb=self._disconnected,
                reconnected_cb=self._reconnected,
                closed_cb=self._closed,
                **options,
            )
        )
        refused = asyncio.ensure_future(self._refused.wait())
        try:
            await asyncio.wait({connecting, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            refused.cancel()
            if not connecting.done():
                connecting.cancel()
                await asyncio.wait({connecting})
        if connecting.cancelled():
            raise _Refused
        connecting.result()

    async def close(self, nc: NATS, timeout: float) -> None:
        """Drain ``nc`` within ``timeout`` (flushing the acks and naks the workers wrote), else close it.

        Never raises (but ``CancelledError``): with the server gone, drain refuses (reconnecting) and close
        writes the reconnect buffer to a dead socket, which raises ``OSError`` or nats-py's errors, and on
        Python 3.13 a ``TypeError`` from asyncio's torn-down transport. The connection is over either way:
        nothing from below may come out of ``disconnect()``.
        """
        self.closing = True
        try:
            await asyncio.wait_for(nc.drain(), timeout=timeout)
            return
        except Exception as error:
            logger.debug("NATS drain failed, closing instead: %s", self.describe(error))
        await self.abandon(nc)

    async def abandon(self, nc: NATS) -> None:
        """Close ``nc`` without draining; never raises (but ``CancelledError``)."""
        # A cancelled nats.connect leaves reader and ping tasks behind; close() stops them. Whatever close()
        # raises, the client is closed for good (nats-py sets that first): said at debug level, not raised.
        try:
            await asyncio.wait_for(nc.close(), timeout=1.0)
        except Exception as error:
            logger.debug("NATS close failed: %s", self.describe(error))

    def describe(self, error: BaseException) -> str:
        """``error`` as ``Type: text`` with secrets removed."""
        text = str(error).strip() or "no details"
        return self.redact(f"{type(error).__name__}: {text}")

    async def _error(self, error: Exception) -> None:
        # Keep a refusal of the credentials as the reason: the connection reset that follows it says less.
        if not _is_auth_error(self._last_error) or _is_auth_error(error):
            self._last_error = error
        if self._refused is not None and _is_refusal(error):
            # A first connect: once every server of the pool has refused, retrying cannot help.
            self._refusals += 1
            if self._refusals >= len(self.servers):
                self._refused.set()
        logger.warning("NATS connection error: %s", self.describe(error))

    async def _disconnected(self) -> None:
        if self.closing:
            return
        logger.warning("disconnected from NATS; reconnecting")
        self._on_disconnected()

    async def _reconnected(self) -> None:
        logger.info("reconnected to NATS")
        self._on_reconnected()

    async def _closed(self) -> None:
        logger.info("NATS connection closed")
