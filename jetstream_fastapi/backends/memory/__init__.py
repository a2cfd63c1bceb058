"""The memory backend: streams and consumers in this process's memory, for tests.

A small fake server and its adapter: :mod:`.server` (``MemoryServer``: the streams, and what storing a
message does), the consumers on it (:mod:`.consumers`), the publish options and recurring schedules it
honours (:mod:`.publish_options`, :mod:`.recurring`), the network between it and the broker, with its fault
injection (:mod:`.faults`); :mod:`.backend` (``MemoryBackend``, the adapter behind the backend interface)
and :mod:`.broker` (``InMemoryBroker``, the front over it). Each module imports only those before it.
Imports nothing from ``nats``.
"""
