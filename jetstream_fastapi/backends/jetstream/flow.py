"""Flow control of one pull worker: who holds each of its ``concurrency`` slots, and when to pull.

Pure bookkeeping (no I/O, no ``nats`` import), so the rules can be read and tested on their own.
A slot is free, or in exactly one of these places:

* **outstanding**: asked for by a pull request, not delivered yet;
* **ready**: delivered, waiting for a lane (the worker's queue; its length is passed in);
* **in flight**: a handler is running on it.

Pull requests wait until ``threshold`` slots are free, so that one request serves several slots. There is
no prefetch, so a freed slot idles until its request is answered: waiting for ``T`` free slots idles each
one ``T / 2`` completions on average, a ``T / (2 * concurrency)`` share of the throughput when handlers
are slow. When handlers are fast the share does not matter (messages are not waiting for slots, the CPU
is the limit) but each request costs client and server work. So the threshold follows the handlers:
a quarter of a batch after a handler that returned within a millisecond, a sixty-fourth otherwise.
Measured (bench/, 2 cores): no-op handlers at batch 100 ran ~98k msg/s with 25 and ~84k with 2;
10 ms handlers at concurrency 256 ran ~21.3k msg/s with 4 and ~20.2k with 16. A threshold of 1 gained 1%
there, and a prefetch beyond the free slots needs about a quarter of the concurrency to gain (+16%, ack
pending up to 1.25x the concurrency): bench/README.md, "Instructions per consumed message".
"""

from __future__ import annotations


class Slots:
    """The slot accounting of one worker (see the module docstring)."""

    SLOW = 0.001
    """A handler that took longer than this (seconds) is slow: pull in small steps."""

    def __init__(self, concurrency: int, batch_size: int) -> None:
        self.concurrency = concurrency
        window = min(batch_size, concurrency)
        self.fast_threshold = max(1, window // 4)
        self.slow_threshold = max(1, window // 64)
        self.threshold = self.fast_threshold
        """Pull once at least this many slots are free."""
        self.outstanding = 0
        self.in_flight = 0

    def handled(self, seconds: float) -> None:
        """A handler finished after ``seconds``: keep the threshold that suits handlers like it."""
        self.threshold = self.fast_threshold if seconds < self.SLOW else self.slow_threshold

    def free(self, ready: int) -> int:
        """Slots that may be pulled for now, with ``ready`` messages waiting for a lane."""
        return self.concurrency - self.outstanding - ready - self.in_flight

    def to_pull(self, ready: int) -> int:
        """How many messages the next pull request should ask for (0: do not pull yet)."""
        # free()'s formula, restated: asked after every ack, where calling it cost ~300 CPU instructions (valgrind).
        free = self.concurrency - self.outstanding - ready - self.in_flight
        return free if free >= self.threshold else 0

    def delivered(self) -> None:
        """A message of a pull request arrived."""
        if self.outstanding > 0:
            self.outstanding -= 1

    def expired(self, pending: int) -> None:
        """A request ended (expired, or cut short) with ``pending`` of its messages never delivered."""
        self.outstanding = max(0, self.outstanding - pending)
