"""The backends under the broker's front: :mod:`.base` is the interface, :mod:`.jetstream` a NATS server
(through nats-py), :mod:`.memory` this process's memory (for tests)."""
