"""Flow control of one pull worker: who holds each of its ``concurrency`` slots, and when to pull.

Pure bookkeeping (no I/O, no ``nats`` import), so the rules can be read and tested on their own.
A slot is free, or in exactly one of these places:

* **outstanding**: asked for by a pull request, not delivered yet;
* **ready**: delivered, waiting for a lane (the worker's queue; its length is passed in);
* **in flight**: a handler is running on it.

Pull requests wait until ``threshold`` slots are free, so that one request serves several slots. The
threshold is small (a sixteenth of a batch): there is no prefetch, so a freed slot idles until its
request is answered, and with 10 ms handlers at concurrency 256 waiting for a quarter of a batch
(64 slots) cost about 8% of the throughput (18.2k against 19.9k msg/s for 16 slots).
"""

from __future__ import annotations


class Slots:
    """The slot accounting of one worker (see the module docstring)."""

    def __init__(self, concurrency: int, threshold: int) -> None:
        self.concurrency = concurrency
        self.threshold = threshold
        """Pull once at least this many slots are free."""
        self.outstanding = 0
        self.in_flight = 0

    def free(self, ready: int) -> int:
        """Slots that may be pulled for now, with ``ready`` messages waiting for a lane."""
        return self.concurrency - self.outstanding - ready - self.in_flight

    def to_pull(self, ready: int) -> int:
        """How many messages the next pull request should ask for (0: do not pull yet)."""
        free = self.concurrency - self.outstanding - ready - self.in_flight  # free(), inlined: once per message
        return free if free >= self.threshold else 0

    def delivered(self) -> None:
        """A message of a pull request arrived."""
        if self.outstanding > 0:
            self.outstanding -= 1

    def expired(self, pending: int) -> None:
        """A request ended (expired, or cut short) with ``pending`` of its messages never delivered."""
        self.outstanding = max(0, self.outstanding - pending)
