"""The memory backend: streams and consumers in this process's memory, for tests.

:mod:`.backend` (``MemoryBackend``), :mod:`.broker` (``InMemoryBroker``, the front over it), its consumers
(:mod:`.consumers`) and fault injection (:mod:`.faults`). Imports nothing from ``nats``.
"""
