"""An orders service built on jetstream-fastapi: ``python -m example_app`` serves it.

``POST /orders`` stores an order in a SQLite file and publishes it to ``orders.created`` through the
transactional outbox; a consumer on queue ``order-processor`` processes it, one on queue ``billing`` writes
its invoice exactly once (the inbox); ``GET /orders/{id}`` tells whether it was processed. See
:mod:`example_app.app`.
"""

from .app import Order, create_app

__all__ = ["Order", "create_app"]
