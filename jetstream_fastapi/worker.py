"""The pull worker: one JetStream pull consumer feeding a bounded pool of handler tasks.

Built on nats-py's core ``subscribe``/``publish`` in the way nats.go's ``Consume`` works, not on
``fetch()`` (which stalls, mixes error types and hangs ``drain``; see the project notes):

* one inbox subscription receives messages and status replies for every pull request;
* pull requests ask for at most the free handler slots (:class:`~jetstream_fastapi.flow.Slots`); a new
  one is sent as soon as a quarter of a batch of slots is free (a sixty-fourth when handlers take over a
  millisecond); each expires after ``fetch_wait``, with idle heartbeats every ``fetch_wait / 2``;
* a pull request that follows an ack rides on it (``+NXT``, "ack and request next"): one message instead
  of two, and the server applies that ack, and every ack before it, before it serves the request, so the
  consumer's ack-pending count on the server stays within the concurrency (a separate request could be
  served while acks sent before it still wait in the server's queue);
* messages run on :class:`~jetstream_fastapi.lanes.Lanes`: at most ``concurrency`` long-lived tasks, not
  a task per message;
* a watchdog resets and re-pulls after two missed heartbeats, sends "in progress" for handlers running
  past half the ack wait, and re-pulls after a reconnect;
* a deleted consumer (409 "Consumer Deleted", or no responders) is recreated.

The fate of each message is decided by :func:`~jetstream_fastapi.consuming.run_handler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from . import fastpath
from .consuming import ACKED, Action, ConsumerSettings, Verdict, run_handler
from .driver import Delivery, Handler, Message
from .flow import Slots
from .lanes import Lanes

logger = logging.getLogger("jetstream_fastapi")

ACK = b"+ACK"
NAK = b"-NAK"
IN_PROGRESS = b"+WPI"
_MAX_HEARTBEAT = 30.0
_RECREATE_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)

TerminateHook = Callable[[Message, Verdict], Awaitable[bool]]
"""Called before a message is terminated (dead-lettering); returning False naks it instead."""


class WorkerState(enum.Enum):
    """Lifecycle of a :class:`PullWorker`."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def nak_payload(delay: float) -> bytes:
    """The ``-NAK`` body asking the server to redeliver after ``delay`` seconds."""
    if delay <= 0:
        return NAK
    return b'-NAK {"delay": %d}' % int(delay * 1e9)


def decode(msg: Msg) -> Message:
    """Turn a nats-py JetStream message into a :class:`Message`, reading its delivery from the reply subject."""
    tokens = msg.reply.split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>, or the newer form with
    # <domain>.<account hash> after $JS.ACK and a random token at the end. (Positional arguments: this
    # runs for every message.)
    stream, consumer, attempt, sequence, _, timestamp = tokens[2:8] if len(tokens) == 9 else tokens[4:10]
    delivery = Delivery(stream, int(sequence), int(attempt), int(timestamp), consumer)
    return Message(msg.data, msg.headers or {}, msg.subject, delivery)


class PullWorker:
    """Runs ``handler`` for every message of one consumer until :meth:`stop`."""

    def __init__(
        self,
        nc: NATS,
        *,
        stream: str,
        consumer: str,
        handler: Handler,
        settings: ConsumerSettings,
        ensure_consumer: Callable[[], Awaitable[object]],
        on_terminate: TerminateHook | None = None,
        on_settled: Callable[[], None] | None = None,
        api_prefix: str = "$JS.API",
    ) -> None:
        self._nc = nc
        # nats-py's publish(subject, payload, reply, headers) itself on the public API: no wrapper coroutine.
        self._publish = fastpath.publisher(nc) if fastpath.ENABLED else nc.publish
        self.stream = stream
        self.consumer = consumer
        self._handler = handler
        self._settings = settings
        self._ensure_consumer = ensure_consumer
        self._on_terminate = on_terminate
        self._on_settled = on_settled
        self._pull_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._heartbeat = min(settings.fetch_wait / 2, _MAX_HEARTBEAT)
        self._slots = Slots(settings.concurrency, settings.batch_size)
        self._requests: dict[int, bytes] = {}
        self._inbox = ""
        self._sub: Subscription | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._recreating: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, float] = {}  # reply subject -> last ack-wait refresh (monotonic)
        self._lanes: Lanes[Msg] = Lanes(settings.concurrency, self._handle, f"jetstream-lane-{consumer}")
        self._paused = False
        self._last_activity = 0.0
        self.state = WorkerState.NEW
        self.last_error: str | None = None
        """The last problem the worker met (a status reply, a failed recreate), for health probes."""

    @property
    def in_flight(self) -> int:
        """Handlers running now."""
        return self._slots.in_flight

    async def start(self) -> None:
        """Subscribe the inbox, start the watchdog and send the first pull request."""
        if self.state is not WorkerState.NEW:
            return
        self._inbox = self._nc.new_inbox()
        if fastpath.ENABLED:
            self._sub = await fastpath.subscribe_direct(self._nc, self._inbox, self._deliver)
        else:
            self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)
        self.state = WorkerState.RUNNING
        self._last_activity = time.monotonic()
        self._watchdog = asyncio.create_task(self._watch(), name=f"jetstream-watchdog-{self.consumer}")
        await self._pull()

    # -- pulling -----------------------------------------------------------------------------------

    def _request(self, batch: int) -> bytes:
        body = self._requests.get(batch)
        if body is None:
            body = json.dumps(
                {
                    "batch": batch,
                    "expires": int(self._settings.fetch_wait * 1e9),
                    "idle_heartbeat": int(self._heartbeat * 1e9),
                }
            ).encode()
            self._requests[batch] = body
        return body

    def _wanted(self) -> int:
        """The size of the pull request to send now (0: none)."""
        if self.state is not WorkerState.RUNNING or self._paused or self._recreating is not None:
            return 0
        return min(self._slots.to_pull(len(self._lanes.ready)), self._settings.batch_size)

    async def _pull(self) -> None:
        slots = self._slots
        while (batch := self._wanted()) > 0:
            slots.outstanding += batch
            try:
                await self._publish(self._pull_subject, self._request(batch), self._inbox, None)
            except Exception as error:  # closed or draining connection: the watchdog retries
                slots.outstanding -= batch
                self.last_error = f"pull request failed: {error!r}"
                return

    def _deliver(self, msg: Msg) -> None:
        # Direct delivery (fastpath): called inside nats-py's reader for each message, so the usual case
        # is handled here at once, and the rest (status messages, giving back after stop) in a task.
        if msg.reply and self.state is WorkerState.RUNNING:
            self._accept(msg)
        else:
            self._spawn(self._on_message(msg))

    async def _on_message(self, msg: Msg) -> None:
        if not msg.reply:
            self._last_activity = time.monotonic()
            await self._on_status(msg.headers or {})
        elif self.state is WorkerState.RUNNING:
            # On nats-py's subscription task (public API): once handlers have proven not to suspend, they
            # run right here, an event-loop turn sooner than on a lane (see Lanes.offer).
            self._last_activity = time.monotonic()
            self._slots.delivered()
            await self._lanes.offer(msg)
        else:
            self._slots.delivered()
            await self._give_back(msg)

    def _accept(self, msg: Msg) -> None:
        self._last_activity = time.monotonic()
        self._slots.delivered()
        # Pulls never ask for more than the free slots, so this queue stays within the concurrency (after
        # a reset, old requests may deliver a few more: they wait here for a lane rather than exceed it).
        self._lanes.push(msg)

    async def _on_status(self, headers: dict[str, str]) -> None:
        status = headers.get("Status", "")
        if status == "100":  # idle heartbeat: activity was recorded
            return
        description = headers.get("Description", "")
        slots = self._slots
        pending = headers.get("Nats-Pending-Messages")
        if pending is not None:
            slots.expired(int(pending))
        if (status == "409" and "Consumer Deleted" in description) or status == "503":
            self.last_error = f"consumer {self.consumer!r} is gone ({status} {description}); recreating"
            logger.warning("%s", self.last_error)
            slots.outstanding = 0
            self._schedule_recreate()
            return
        if status == "409" and "Leadership Change" in description:
            slots.outstanding = 0
        elif status not in ("404", "408", "409"):
            self.last_error = f"pull request refused: {status} {description}"
            logger.error("consumer %s: %s", self.consumer, self.last_error)
            slots.outstanding = 0
            return  # the watchdog retries after a heartbeat interval instead of a tight loop
        await self._pull()

    # -- handling ----------------------------------------------------------------------------------

    async def _handle(self, msg: Msg) -> None:
        reply = msg.reply
        slots = self._slots
        slots.in_flight += 1
        self._running[reply] = started = time.monotonic()
        try:
            message = decode(msg)
            verdict = await run_handler(self._handler, message, self._settings)
            slots.handled(time.monotonic() - started)
            if verdict is ACKED:
                self._release(reply)
                await self._ack(reply)
                return  # a pull request that was due rode on the ack
            if verdict.action is Action.NAK:
                payload = nak_payload(verdict.delay)
            else:
                payload = await self._term_payload(message, verdict)
            self._release(reply)
            await self._publish(reply, payload, "", None)
        except asyncio.CancelledError:
            # Shutdown timeout: give the message back at once instead of waiting out the ack wait.
            with contextlib.suppress(Exception):
                await self._publish(reply, NAK, "", None)
            raise
        except Exception as error:
            # The ack could not be sent (connection closed): the server redelivers after the ack wait.
            self.last_error = f"could not settle a message: {error!r}"
            logger.warning("consumer %s: %s", self.consumer, self.last_error)
        finally:
            if reply in self._running:  # not released yet: the handler or dead-lettering raised
                self._release(reply)
            if self._on_settled is not None:
                self._on_settled()
        await self._pull()

    async def _term_payload(self, message: Message, verdict: Verdict) -> bytes:
        if self._on_terminate is not None and not await self._on_terminate(message, verdict):
            # The dead letter could not be stored: keep the message rather than lose it.
            return nak_payload(self._settings.backoff.maximum)
        return b"+TERM " + verdict.reason.encode()[:1024]

    def _release(self, reply: str) -> None:
        """The handler is done with the message: its slot is free."""
        del self._running[reply]
        self._slots.in_flight -= 1

    async def _ack(self, reply: str) -> None:
        # If a pull is due, the ack carries it: "+NXT <request>" with our inbox as the reply subject.
        batch = self._wanted()
        if batch == 0:
            await self._publish(reply, ACK, "", None)
            return
        self._slots.outstanding += batch
        try:
            await self._publish(reply, b"+NXT " + self._request(batch), self._inbox, None)
        except BaseException:
            self._slots.outstanding -= batch
            raise

    async def _give_back(self, msg: Msg) -> None:
        with contextlib.suppress(Exception):
            await self._publish(msg.reply, NAK, "", None)

    # -- watchdog, reconnects, recreation ----------------------------------------------------------

    async def _watch(self) -> None:
        tick = min(self._heartbeat, self._settings.ack_wait / 4)
        while self.state is WorkerState.RUNNING:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if self._running:
                await self._refresh_long_handlers(now)
            if self._paused or self._recreating is not None:
                continue
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
                self._running[reply] = now
                with contextlib.suppress(Exception):
                    await self._publish(reply, IN_PROGRESS, "", None)

    def connection_lost(self) -> None:
        """The connection dropped: stop pulling until it is back."""
        self._paused = True

    def connection_restored(self) -> None:
        """The connection is back: old pull requests died with it, so pull afresh."""
        self._paused = False
        self._slots.outstanding = 0
        self._last_activity = time.monotonic()
        if self.state is WorkerState.RUNNING:
            self._spawn(self._pull())

    def _schedule_recreate(self) -> None:
        if self._recreating is None and self.state is WorkerState.RUNNING:
            self._recreating = asyncio.create_task(self._recreate())

    async def _recreate(self) -> None:
        attempt = 0
        while self.state is WorkerState.RUNNING:
            try:
                await self._ensure_consumer()
                self.last_error = None
                logger.info("consumer %s on stream %s recreated", self.consumer, self.stream)
                break
            except Exception as error:
                self.last_error = f"recreating consumer {self.consumer!r} failed: {error!r}"
                logger.warning("%s", self.last_error)
                await asyncio.sleep(_RECREATE_DELAYS[min(attempt, len(_RECREATE_DELAYS) - 1)])
                attempt += 1
        self._recreating = None
        self._last_activity = time.monotonic()
        await self._pull()

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
        for task in (self._watchdog, self._recreating):
            if task is not None:
                task.cancel()
        if self._sub is not None:
            # Drain: the server stops sending, and messages already buffered go through _on_message,
            # which gives them back (nak) now that the state is STOPPING.
            try:
                await asyncio.wait_for(self._sub.drain(), timeout=max(0.1, min(2.0, timeout)))
            except Exception:
                with contextlib.suppress(Exception):
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
        self.state = WorkerState.STOPPED
