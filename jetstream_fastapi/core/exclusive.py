"""Exclusive consumers: at most one instance of a queue handles messages at any time, the others stand by.

``subscribe(..., queue="report-builder", exclusive=True)`` (or ``ConsumerRouter.handle``) makes the queue's
durable consumer a *pinned client* priority group (ADR-42, nats-server 2.11 or later; an older server
is refused with :class:`~jetstream_fastapi.errors.ServerVersionError`):

* the consumer is created with ``priority_groups=["exclusive"]``, ``priority_policy="pinned_client"`` and
  ``priority_timeout`` = :data:`LEASE`;
* every instance pulls with ``group``; the server picks one request, sends its messages with a
  ``Nats-Pin-Id`` header and holds the other instances' requests. That instance is *active*
  (``Subscription.active``, the readiness probe's ``active``) and sends the pin ``id`` in every pull;
* the pin is a lease: each pull of the active instance renews it, and while its handlers keep every slot
  busy it sends a keep-alive pull that can deliver nothing (``max_bytes`` 1) every ``LEASE / 4``;
* when the active instance stops, it gives the pin up (``$JS.API.CONSUMER.UNPIN``) once its handlers are
  done, and a standby takes over at once; when it dies or is cut off, the lease runs out and a standby
  takes over within :data:`LEASE` seconds (plus one pull round trip). Messages the dead instance had
  taken come back after their ``ack_wait``;
* an instance whose pin is gone (a ``423`` status) drops it and pulls as a standby again.

Limits: the guarantee holds for instances that reach the server. One that is cut off for longer than the
lease may still be finishing handlers it started while a standby already runs (at most its
``concurrency``); give handlers a ``handler_timeout`` under the lease where that matters. The in-memory
broker keeps the same rules: the longest-subscribed member is active; the next takes over once the
active one has stopped and its handlers are done.
"""

from __future__ import annotations

from ..errors import InvalidArgumentError

GROUP = "exclusive"
"""The priority group every instance of an exclusive queue pulls in."""
LEASE = 5.0
"""Seconds the server keeps the pin of an active instance that stopped pulling (``priority_timeout``)."""


def check_exclusive(exclusive: object, queue: str | None) -> bool:
    """``exclusive`` checked: a bool, and only with a ``queue`` (an ephemeral consumer is one per instance)."""
    if not isinstance(exclusive, bool):
        raise InvalidArgumentError(f"exclusive must be True or False, got {exclusive!r}")
    if exclusive and queue is None:
        raise InvalidArgumentError(
            "exclusive=True needs a queue: the instances that share a queue are the ones of which one is active"
        )
    return exclusive
