"""Several processes of one app: the warning for a subscription that every process receives in full.

Under ``uvicorn --workers 4`` (or gunicorn, or four replicas) every process runs the lifespan, so every
process subscribes every handler. With a ``queue`` they share one durable consumer and each message goes
to one of them; without one each process has an ephemeral consumer of its own and *each* gets every
message, which is right for a cache refresh and wrong for a side effect. At startup
:func:`warn_fan_out` warns about each handler without a queue when this process shows it is one of
several: ``--workers N`` (N > 1) on the command line (uvicorn's workers inherit it), or
``WEB_CONCURRENCY`` > 1 (the variable uvicorn and gunicorn take their worker count from). Replicas on
several hosts cannot be seen from inside one; the README's "Running several instances" covers them.

In one process too, a handler without a queue has an ephemeral consumer that starts with what is
published from then on (``deliver_policy="new"``): what was published while the app was down never
reaches it. :func:`warn_without_queue` says so at startup, unless the handler (or its router) sets
``deliver_policy`` itself, which shows that this is meant.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence

from ..driver import Subscriber

logger = logging.getLogger("jetstream_fastapi")


def several_processes(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> str | None:
    """Why this process looks like one of several serving the app (``None``: no sign of it)."""
    args = list(sys.argv if argv is None else argv)
    env = os.environ if environ is None else environ
    for index, arg in enumerate(args):
        value = None
        if arg == "--workers" and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--workers="):
            value = arg.partition("=")[2]
        if value is not None and value.isdigit() and int(value) > 1:
            return f"--workers {value}"
    concurrency = env.get("WEB_CONCURRENCY", "")
    if concurrency.isdigit() and int(concurrency) > 1:
        return f"WEB_CONCURRENCY={concurrency}"
    return None


def warn_fan_out(subscribers: Iterable[Subscriber], reason: str | None = None) -> int:
    """Warn about each subscription without a queue if this is one of several processes (``reason``:
    :func:`several_processes` by default); returns how many warnings were logged."""
    reason = reason if reason is not None else several_processes()
    if reason is None:
        return 0
    warned = 0
    for sub in subscribers:
        if sub.queue is None:
            warned += 1
            logger.warning(
                "%s has no queue and this process is one of several (%s): every process receives every "
                "message of it; give the handler a queue=... for each message to go to one process",
                sub.subject,
                reason,
            )
    return warned


def warn_without_queue(handlers: Iterable[tuple[str, str | None, Mapping[str, object]]]) -> int:
    """Warn about each handler without a queue and without its own ``deliver_policy``: ``(subject, queue,
    options)`` of each handler; returns how many warnings were logged."""
    warned = 0
    for subject, queue, options in handlers:
        if queue is None and "deliver_policy" not in options:
            warned += 1
            logger.warning(
                "%s is handled without a queue: its consumer lives as long as this process and receives only what "
                "is published from now on, so what was published while the app was down never reaches it; give "
                "the handler a queue=... to receive that too, or deliver_policy='new' to say that only new "
                "messages are meant",
                subject,
            )
    return warned
