"""An orders service built on jetstream-fastapi: ``python -m example_app`` serves it.

``POST /orders`` publishes an order to ``orders.created``; a consumer on queue ``order-processor``
processes it; ``GET /orders/{id}`` tells whether it was. See :mod:`example_app.app`.
"""

from .app import Order, OrderStore, create_app

__all__ = ["Order", "OrderStore", "create_app"]
