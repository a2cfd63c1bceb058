"""``Publication``: a typed declaration of a subject the app publishes to, for code and for the AsyncAPI document.

::

    order_created = Publication("orders.created", Order, description="A new order")

    @app.post("/orders")
    async def create(order: Order, broker: BrokerDep) -> None:
        await order_created.publish(broker, order)   # encoded as Order's JSON, PubAck awaited

Declare it on a :class:`~jetstream_fastapi.ConsumerRouter` (``consumer_router.publisher(...)``) or pass
it to :func:`~jetstream_fastapi.asyncapi_router` so the document lists the subject with its schema.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..core.subjects import check_subject
from ..driver import Broker, PubAck
from ..errors import InvalidArgumentError

P = TypeVar("P")


class Publication(Generic[P]):
    """The subject ``subject`` carrying payloads of type ``payload`` (a pydantic model, ``bytes``, ``str``, or
    any type pydantic serialises to JSON)."""

    def __init__(self, subject: str, payload: type[P], *, description: str | None = None) -> None:
        check_subject(subject, wildcards=False)
        self.subject = subject
        self.payload = payload
        self.description = description
        self._adapter: TypeAdapter[Any] | None = None
        if payload not in (bytes, str) and not (isinstance(payload, type) and issubclass(payload, BaseModel)):
            try:
                self._adapter = TypeAdapter(payload)
            except Exception as error:
                raise InvalidArgumentError(f"Publication({subject!r}): cannot serialise {payload!r}: {error}") from None

    def encode(self, value: P) -> bytes:
        """The body for ``value``; :class:`~jetstream_fastapi.InvalidArgumentError` if it is not a ``payload``."""
        if self._adapter is None:
            if not isinstance(value, self.payload):
                wanted, got = self.payload.__name__, type(value).__name__
                raise InvalidArgumentError(f"{self.subject} carries {wanted}, got {got}")
            if isinstance(value, bytes):
                return value
            if isinstance(value, str):
                return value.encode()
            assert isinstance(value, BaseModel)
            return value.model_dump_json().encode()
        try:
            return self._adapter.dump_json(self._adapter.validate_python(value))
        except ValidationError as error:
            raise InvalidArgumentError(f"{self.subject}: invalid payload: {error}") from None

    async def publish(
        self,
        broker: Broker,
        value: P,
        *,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> PubAck:
        """Encode ``value`` and publish it on ``broker`` (see :meth:`~jetstream_fastapi.Broker.publish`)."""
        return await broker.publish(self.subject, self.encode(value), msg_id=msg_id, headers=headers, timeout=timeout)

    def __repr__(self) -> str:
        name = getattr(self.payload, "__name__", repr(self.payload))
        return f"Publication({self.subject!r}, {name})"
