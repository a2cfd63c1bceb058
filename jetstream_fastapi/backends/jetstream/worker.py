"""The pull worker: one JetStream pull consumer feeding a bounded pool of handler tasks.

Built on nats-py's core ``subscribe``/``publish`` in the way nats.go's ``Consume`` works, not on
``fetch()`` (which stalls, mixes error types and hangs ``drain``; see the project notes):

* one inbox subscription receives messages and status replies for every pull request;
* pull requests ask for at most the free handler slots (:class:`~.flow.Slots`); a new
  one is sent as soon as a quarter of a batch of slots is free (a sixty-fourth when handlers take over a
  millisecond); each expires after ``fetch_wait``, with idle heartbeats every ``fetch_wait / 2``;
* a pull request that follows an ack rides on it (``+NXT``, "ack and request next"): one message instead
  of two, and the server applies that ack, and every ack before it, before it serves the request, so the
  consumer's ack-pending count on the server stays within the concurrency (a separate request could be
  served while acks sent before it still wait in the server's queue);
* messages run on :class:`~.lanes.Lanes`: at most ``concurrency`` long-lived tasks, not
  a task per message;
* a watchdog resets and re-pulls after two missed heartbeats, sends "in progress" for handlers running
  past half the ack wait, and re-pulls after a reconnect;
* a 503 "no responders" or a 409 "Consumer Deleted" starts a check (:mod:`~.recovery`):
  the consumer is recreated only if the server says it is gone, and acks that may have been lost to a
  server restart are resent once it answers (after a reconnect too);
* with a priority ``group`` (``exclusive=True``), pulls carry the group and the pin id, and the pin is
  renewed and given up as :mod:`~jetstream_fastapi.backends.jetstream.pinning` says;
* a message whose dead letter cannot be stored is held, kept "in progress", until it can
  (:mod:`~jetstream_fastapi.core.processing`).

The fate of each message is decided by the broker's front (the ``process`` it is given).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ...core.handling import ACKED, Action, ConsumerSettings, is_handler_failure
from ...core.redaction import redact
from ..base import Process
from .acks import ACK, IN_PROGRESS, NAK, SEND_ERRORS, ack_prefix, decode, is_ack_of, nak_payload, reply_fields, where
from .flow import Slots
from .lanes import Lanes
from .pinning import WRONG_PIN, Pin
from .publish_options import SCHEDULE_HEADER
from .recovery import Recovery, no_responders_subject, one_line

logger = logging.getLogger("jetstream_fastapi")

_MAX_HEARTBEAT = 30.0
_KEEP_ACKS = 10_000
"""At most this many acks are remembered per worker for a resend after a reconnect or a check (about 1 MB)."""
_ACKS_PER_SLOT = 64
FORGED_LOG_EVERY = 1000
"""A forged delivery is logged at WARNING once per this many (the first included): counted, not a flood."""


def acks_to_keep(settings: ConsumerSettings) -> int:
    """How many of its last acks a worker keeps for a resend (see :mod:`.recovery`).

    An ack applied by a server that then died may not have reached its replicas or its disk yet, for longer
    than the last few acks take: a consumer-leader kill at ~1,600 acks/s (``concurrency=8``, 5 ms handlers)
    lost some, and 3 runs of 8 waited out the 30 s ack wait while only the last 24 were kept. A worker acks
    at most ``concurrency`` messages per handler time, so the memory scales with its handler slots (64 acks
    each: 1,024 there, 0 of 8 runs waited), capped at :data:`_KEEP_ACKS`; a key-order partition
    (``concurrency=1``) keeps 128, so 256 partitions keep ~32,000 subjects instead of 2.5 million.
    """
    return min(_KEEP_ACKS, _ACKS_PER_SLOT * (settings.concurrency + settings.batch_size))


class WorkerState(enum.Enum):
    """Lifecycle of a :class:`PullWorker`."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class PullWorker:
    """Runs ``handler`` for every message of one consumer until :meth:`stop`."""

    def __init__(
        self,
        nc: NATS,
        *,
        stream: str,
        consumer: str,
        process: Process,
        settings: ConsumerSettings,
        ensure_consumer: Callable[[], Awaitable[object]],
        api_prefix: str = "$JS.API",
        group: str | None = None,
    ) -> None:
        self._nc = nc
        self._publish = nc.publish  # (subject, payload, reply, headers)
        self.stream = stream
        self.consumer = consumer
        self._process = process
        self._settings = settings
        self._ensure_consumer = ensure_consumer
        self._pull_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._ack_prefix = ack_prefix(stream, consumer)  # what a delivery's reply starts with (v1)
        self._heartbeat = min(settings.fetch_wait / 2, _MAX_HEARTBEAT)
        self._slots = Slots(settings.concurrency, settings.batch_size)
        self._requests: dict[int, bytes] = {}
        self._pin = None if group is None else Pin(nc, group, stream=stream, consumer=consumer, api_prefix=api_prefix)
        self._inbox = ""
        self._sub: Subscription | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, float] = {}  # reply subject -> last ack-wait refresh (monotonic)
        self._lanes: Lanes[Msg] = Lanes(settings.concurrency, self._handle, f"jetstream-lane-{consumer}")
        self._paused = False
        self._last_activity = 0.0  # monotonic: the last status message, or a watchdog tick that saw deliveries
        self._delivered = 0  # messages delivered so far (the watchdog reads it instead of a clock read per message)
        self._delivered_seen = 0  # _delivered at the watchdog's last tick
        self.state = WorkerState.NEW
        self.last_error: str | None = None
        """The last problem the worker met (a status reply, a failed recreate), for health probes."""
        self.counters: Counter[str] = Counter()
        """How often each rare path was taken, for metrics: every failure the worker survives is counted.
        Sending: ``pull_failed``, ``settle_failed``, ``give_back_failed``, ``in_progress_failed``;
        status replies: ``pull_refused``, ``pin_lost`` (exclusive: another instance holds the pin),
        ``no_responders``, ``consumer_deleted``, ``forged_status`` (a 503 naming an ack subject of another
        consumer: ignored), ``forged_delivery`` (a message on the inbox whose reply is no ack subject of
        this consumer: dropped); recovery: ``check_retried``, ``recreated``,
        ``recreate_failed``, ``acks_resent``, ``ack_resend_failed``; ``ephemeral_delete_failed``."""
        self._recovery = Recovery(
            nc,
            info_subject=f"{api_prefix}.CONSUMER.INFO.{stream}.{consumer}",
            consumer=consumer,
            stream=stream,
            keep=acks_to_keep(settings),
            ensure_consumer=ensure_consumer,
            publish=self._publish,
            counters=self.counters,
        )
        self._recent_acks = self._recovery.recent_acks

    @property
    def active(self) -> bool | None:
        """With a priority group: whether this worker holds the pin; ``None`` without one."""
        return None if self._pin is None else self._pin.id is not None

    @property
    def in_flight(self) -> int:
        """Handlers running now."""
        return self._slots.in_flight

    async def start(self) -> None:
        """Subscribe the inbox, start the watchdog and send the first pull request."""
        if self.state is not WorkerState.NEW:
            return
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)
        if self._pin is not None:
            await self._pin.start(self._inbox)
        self.state = WorkerState.RUNNING
        self._last_activity = time.monotonic()
        self._watchdog = asyncio.create_task(self._watch(), name=f"jetstream-watchdog-{self.consumer}")
        await self._pull()

    # -- pulling -----------------------------------------------------------------------------------

    def _request(self, batch: int) -> bytes:
        body = self._requests.get(batch)
        if body is None or self._pin is not None:
            fields = {} if self._pin is None else self._pin.fields()
            body = json.dumps(
                {
                    "batch": batch,
                    "expires": int(self._settings.fetch_wait * 1e9),
                    "idle_heartbeat": int(self._heartbeat * 1e9),
                    **fields,
                }
            ).encode()
            self._requests[batch] = body
        return body

    def _wanted(self) -> int:
        """The size of the pull request to send now (0: none)."""
        # Asked after every ack: the usual answer (too few free slots yet) comes first.
        free = self._slots.to_pull(len(self._lanes.ready))
        if free == 0 or self.state is not WorkerState.RUNNING or self._paused or self._checking is not None:
            return 0
        return min(free, self._settings.batch_size)

    async def _pull(self) -> None:
        slots = self._slots
        while (batch := self._wanted()) > 0:
            slots.outstanding += batch
            try:
                await self._publish(self._pull_subject, self._request(batch), self._inbox, None)
            except Exception as error:  # SEND_ERRORS: the watchdog retries; anything else is logged as a bug
                slots.outstanding -= batch
                self._failed("pull_failed", "a pull request failed", None, error)
                return

    async def _on_message(self, msg: Msg) -> None:
        reply = msg.reply
        if not reply:
            self._last_activity = time.monotonic()
            await self._on_status(msg.headers or {})
        elif not (reply.startswith(self._ack_prefix) and reply.count(".") == 8) and not is_ack_of(
            reply, self.stream, self.consumer
        ):
            # Not a delivery of this consumer (v1 checked by prefix, v2 parsed only then): anyone who can
            # publish to the inbox sent it. Neither run, nor settle (that would publish to its reply).
            self._forged(reply)
        elif self.state is WorkerState.RUNNING:
            if self._pin is not None:
                self._pin.seen(msg.headers)
            # On nats-py's subscription task (public API): once handlers have proven not to suspend, they
            # run right here, an event-loop turn sooner than on a lane (Lanes.offer, written out: one
            # coroutine fewer per message). A delivery is counted, not timed: the watchdog compares counts.
            self._delivered += 1
            self._slots.delivered()
            lanes = self._lanes
            if not lanes.takes_inline():
                lanes.push(msg)
                return
            turns = lanes.watch_turns()
            await self._handle(msg)
            lanes.returned(turns)  # a handler that suspended ends inlining
        else:
            self._slots.delivered()
            await self._give_back(msg)

    def _forged(self, reply: str) -> None:
        count = self.counters["forged_delivery"] = self.counters["forged_delivery"] + 1
        if (count - 1) % FORGED_LOG_EVERY == 0:
            logger.warning(
                "consumer %s: dropped a forged delivery on its inbox (%d so far): its reply %r is no ack subject "
                "of stream %s, consumer %s",
                self.consumer,
                count,
                reply[:200],
                self.stream,
                self.consumer,
            )

    async def _on_status(self, headers: dict[str, str]) -> None:
        status = headers.get("Status", "")
        if status in ("100", ""):  # idle heartbeat (activity was recorded), or the server confirming a resent ack
            return
        description = headers.get("Description", "")
        slots = self._slots
        pending = headers.get("Nats-Pending-Messages")
        if pending is not None:
            slots.expired(int(pending))
        if status == "503":
            # Nothing answered a pull, or an ack that carried one: JetStream is stopping or starting, a leader
            # is being elected, or the consumer is gone. The check tells which.
            subject = no_responders_subject(headers)
            if subject.startswith("$JS.ACK."):
                self._recovery.refused(subject)  # not applied: resent once the consumer answers
            self.counters["no_responders"] += 1
            slots.outstanding = 0
            self._schedule_check(f"no responders for {subject or 'a pull request'}")
            return
        if status == "409" and "Consumer Deleted" in description:
            self.counters["consumer_deleted"] += 1
            slots.outstanding = 0
            self._schedule_check("consumer deleted")
            return
        if status == WRONG_PIN:  # the pin moved on (it expired, or was given up): pull again as a standby
            self.counters["pin_lost"] += 1
            if self._pin is not None:
                self._pin.lost()
            slots.outstanding = 0
        elif status == "409" and "Leadership Change" in description:
            slots.outstanding = 0
        elif status not in ("404", "408", "409"):
            self.last_error = f"pull request refused: {status} {one_line(description)}"
            self.counters["pull_refused"] += 1
            logger.error("consumer %s: %s", self.consumer, self.last_error)
            slots.outstanding = 0
            return  # the watchdog retries after a heartbeat interval instead of a tight loop
        await self._pull()

    # -- handling ----------------------------------------------------------------------------------

    async def _handle(self, msg: Msg) -> None:
        # The hot path: the schedule check, the release of the slot and the ack are written out here (three
        # calls fewer per message, ~1.9k CPU instructions under valgrind; bench/README.md, proposal B).
        reply = msg.reply
        slots = self._slots
        running = self._running
        slots.in_flight += 1
        running[reply] = started = time.monotonic()
        try:
            # A schedule (SCHEDULE_HEADER) kept on a subject this consumer's wildcard also captures: not for
            # the handler, the server delivers its target's copy at its time.
            headers = msg.headers
            verdict = ACKED if headers and SCHEDULE_HEADER in headers else await self._process(decode(msg))
            slots.handled(time.monotonic() - started)
            del running[reply]  # the handler is done with the message: its slot is free
            slots.in_flight -= 1
            if verdict is ACKED:
                self._recent_acks.append(reply)  # resent after a restart, which may drop it without a word
                # If a pull is due, the ack carries it: "+NXT <request>" with our inbox as the reply subject.
                batch = self._wanted()
                if batch == 0:
                    await self._publish(reply, ACK, "", None)
                    return
                slots.outstanding += batch
                try:
                    await self._publish(reply, b"+NXT " + self._request(batch), self._inbox, None)
                except BaseException:
                    slots.outstanding -= batch
                    raise
                return  # the pull request that was due rode on the ack
            if verdict.action is Action.NAK:
                payload = nak_payload(verdict.delay)
            else:
                payload = b"+TERM " + verdict.reason.encode()[:1024]
            await self._publish(reply, payload, "", None)
        except asyncio.CancelledError as error:
            # Shutdown timeout: give the message back at once instead of waiting out the ack wait.
            await self._give_back(msg)
            if not is_handler_failure(error):
                raise
            # Not this task being cancelled (verdict_for turns a handler's own into a failed attempt, so this
            # is a bug below it): this task may be nats-py's subscription task, which must outlive it.
            self._failed("settle_failed", "could not process", msg.reply, error)
        except Exception as error:
            # SEND_ERRORS: the ack, nak or term could not be sent, and the server redelivers after the ack
            # wait. Anything else (a reply subject that does not decode) is a bug, logged with its
            # traceback; the message is redelivered the same way.
            self._failed("settle_failed", "could not settle", reply, error)
        finally:
            if reply in running:  # not released yet: decoding or processing raised
                del running[reply]
                slots.in_flight -= 1
        await self._pull()

    async def _give_back(self, msg: Msg) -> None:
        try:
            await self._publish(msg.reply, NAK, "", None)
        except SEND_ERRORS as error:  # redelivered after its ack wait instead of at once
            self._failed("give_back_failed", "could not give back", msg.reply, error)

    def _note(self, problem: str) -> None:
        self.last_error = problem

    def _failed(self, counter: str, what: str, reply: str | None, error: BaseException) -> None:
        """Count, record and log a failure the worker survives (one line, with the message if any)."""
        self.counters[counter] += 1
        about = f" {where(reply)}" if reply else ""
        self.last_error = f"{what}{about}: {one_line(redact(repr(error)))}"
        expected = isinstance(error, SEND_ERRORS)
        level = logging.WARNING if expected else logging.ERROR
        logger.log(
            level,
            "consumer %s: %s",
            self.consumer,
            self.last_error,
            exc_info=None if expected else error,
            extra=reply_fields(reply) if reply else None,
        )

    # -- watchdog, reconnects, recreation ----------------------------------------------------------

    async def _watch(self) -> None:
        # An eighth of the ack wait: "in progress" goes out between 1/2 and 5/8 of it, and one that failed
        # is sent again at the next tick, still well before the server's ack timer runs out.
        tick = min(self._heartbeat, self._settings.ack_wait / 8)
        if self._pin is not None:
            tick = min(tick, self._pin.interval / 2)
        while self.state is WorkerState.RUNNING:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if self._running:
                await self._refresh_long_handlers(now)
            if self._paused or self._checking is not None:
                continue
            if self._pin is not None:
                await self._pin.keep_alive(now)
            if self._delivered != self._delivered_seen:  # deliveries since the last tick: activity
                self._delivered_seen = self._delivered
                self._last_activity = now
            if self._slots.outstanding and now - self._last_activity > 2 * self._heartbeat:
                logger.warning("consumer %s: missed heartbeats, pulling again", self.consumer)
                self._slots.outstanding = 0
                self._last_activity = now
            await self._pull()

    async def _refresh_long_handlers(self, now: float) -> None:
        # A handler running past half the ack wait would be redelivered to someone else; "+WPI" resets
        # the server's ack timer for that message.
        limit = self._settings.ack_wait / 2
        for reply, since in list(self._running.items()):
            if now - since >= limit and reply in self._running:
                try:
                    await self._publish(reply, IN_PROGRESS, "", None)
                except SEND_ERRORS as error:
                    # Not marked as refreshed: the next tick (an eighth of the ack wait away) tries again.
                    self._failed("in_progress_failed", "could not send 'in progress' (retried) for", reply, error)
                    continue
                if reply in self._running:
                    self._running[reply] = now

    def connection_lost(self) -> None:
        """The connection dropped: stop pulling until it is back."""
        self._paused = True

    def connection_restored(self) -> None:
        """The connection is back: old pull requests died with it, and acks sent just before may have been
        dropped; once the consumer answers, resend those and pull afresh."""
        self._paused = False
        self._slots.outstanding = 0
        self._last_activity = time.monotonic()
        if self._checking is not None:
            # A check that began before the drop waits for an answer that died with the old connection.
            self._checking.cancel()
            self._checking = None
        self._schedule_check(None)

    def _schedule_check(self, reason: str | None) -> None:
        if self._checking is None and self.state is WorkerState.RUNNING:
            if reason is not None:
                self.last_error = f"consumer {self.consumer!r}: {reason}; checking it"
                logger.warning("%s", self.last_error)  # once per check, not once per status message
            self._checking = asyncio.create_task(self._check(), name=f"jetstream-check-{self.consumer}")

    async def _check(self) -> None:
        recovery = self._recovery
        try:
            answered = await recovery.wait_until_answered(self._can_pull)
            if not answered and recovery.last_error is not None:
                self.last_error = recovery.last_error
        finally:
            if self._checking is asyncio.current_task():  # not replaced by a reconnect's check
                self._checking = None
        if answered:
            await recovery.resend_acks(self._inbox)
            self._last_activity = time.monotonic()
            await self._pull()

    def _can_pull(self) -> bool:
        return self.state is WorkerState.RUNNING and not self._paused

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- shutdown ----------------------------------------------------------------------------------

    async def stop(self, timeout: float) -> None:
        """Stop pulling at once, let running handlers finish within ``timeout``, give back the rest."""
        if self.state is not WorkerState.RUNNING:
            self.state = WorkerState.STOPPED
            return
        self.state = WorkerState.STOPPING
        deadline = time.monotonic() + timeout
        not_started = self._lanes.close()  # running handlers finish; no lane takes another message
        for task in (self._watchdog, self._checking):
            if task is not None:
                task.cancel()
        if self._sub is not None:
            # Drain: the server stops sending, and messages already buffered go through _on_message,
            # which gives them back (nak) now that the state is STOPPING.
            try:
                await asyncio.wait_for(self._sub.drain(), timeout=max(0.1, min(2.0, timeout)))
            except (TimeoutError, *SEND_ERRORS):  # too slow, or the connection is gone: unsubscribe at least
                with contextlib.suppress(*SEND_ERRORS):
                    await self._sub.unsubscribe()
        for msg in not_started:
            await self._give_back(msg)
        running = self._lanes.tasks | self._tasks
        if running:
            _, late = await asyncio.wait(running, timeout=max(0.0, deadline - time.monotonic()))
            if late:
                logger.warning(
                    "consumer %s: %d handler(s) still running after the %gs shutdown timeout; cancelled and given back",
                    self.consumer,
                    len(late),
                    timeout,
                )
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        if self._pin is not None:
            await self._pin.release()
        self.state = WorkerState.STOPPED
