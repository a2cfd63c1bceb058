"""The JetStream backend: a NATS server through nats-py's public API.

:mod:`.backend` (``JetStreamBackend``, and ``JetStreamBroker``, the front over it) ties together the
connection (:mod:`.connection`), the publish path (:mod:`.publisher`, :mod:`.pubacks`, :mod:`.pipeline`),
the streams and consumers on the server (:mod:`.streams`, :mod:`.consumers`, :mod:`.dead_letters`) and
the pull worker (:mod:`.worker`, with its slot accounting in :mod:`.flow` and handler tasks in :mod:`.lanes`).
"""
