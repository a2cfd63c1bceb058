"""``python -m example_app``: serve the orders service with uvicorn.

``HOST`` and ``PORT`` (default ``127.0.0.1:8000``; use ``HOST=0.0.0.0`` in a container) set where it
listens. ``ADMIN_TOKEN`` guards the admin page and the dead-letter routes; without it the admin page is
served only when ``HOST`` is a loopback address, and only to requests addressed to a loopback name.
With ``NATS_URL`` set it uses that server; otherwise it starts an embedded ``nats-server`` with its store
in a temporary directory, and stops it after uvicorn exits. Orders are kept in the SQLite file
``ORDERS_DB`` (default ``orders.db`` in the working directory): what the outbox has not yet published
survives a restart. SIGTERM and Ctrl-C shut down
gracefully (in-flight handlers finish) and exit with status 0. An invalid setting (an ``http://`` URL in
``NATS_URL``, say) exits at once with status 1, saying what is wrong.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from types import FrameType

import uvicorn
from pydantic import ValidationError

from jetstream_fastapi import BrokerSettings, InvalidArgumentError
from jetstream_fastapi.core.redaction import redact, url_secrets
from jetstream_fastapi.server import NatsServer

from .app import create_app, listens_on_loopback

logger = logging.getLogger("example_app")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the previous handler in
    # place; without this one the default action would kill the process (status -15, embedded server left).
    raise KeyboardInterrupt


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"PORT must be a TCP port number (1-65535), got {value!r}")
    return int(value)


def main() -> None:
    """Serve the app until SIGTERM or Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    host = os.environ.get("HOST", "127.0.0.1")
    try:
        port = _port(os.environ.get("PORT", "8000"))
        # Credentials, TLS and tuning come from the other NATS_* variables; checked before anything starts.
        settings = BrokerSettings()
    except (ValidationError, InvalidArgumentError, ValueError) as error:
        raise SystemExit(f"example_app: invalid configuration: {error}") from None
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt), contextlib.ExitStack() as stack:
        nats_url = os.environ.get("NATS_URL")
        if nats_url:
            which = f"NATS at {redact(nats_url, url_secrets(nats_url))} (NATS_URL)"
        else:
            server = stack.enter_context(NatsServer())
            nats_url = server.url
            which = f"an embedded nats-server at {nats_url}, store in {server.store_dir} (set NATS_URL to use another)"
        logger.info("orders service on http://%s:%d using %s", host, port, which)
        database = os.environ.get("ORDERS_DB") or "orders.db"
        logger.info("orders kept in %s (ORDERS_DB)", os.path.abspath(database))
        try:
            app = create_app(
                settings.broker(servers=nats_url), local_admin=listens_on_loopback(host), database=database
            )
        except ValueError as error:
            raise SystemExit(f"example_app: invalid configuration: {error}") from None
        logger.info("admin page: %s", _admin_mode(host))
        uvicorn.run(app, host=host, port=port)


def _admin_mode(host: str) -> str:
    if os.environ.get("ADMIN_TOKEN"):
        return "/admin/jetstream, behind ADMIN_TOKEN"
    if listens_on_loopback(host):
        return "/admin/jetstream, for local use only (set ADMIN_TOKEN to serve it elsewhere)"
    return f"off: HOST={host} is not loopback and ADMIN_TOKEN is not set"


if __name__ == "__main__":
    main()
