"""What the inboxes record of a message: the consumer that delivered it and the message's identity."""

from __future__ import annotations

from ..driver import Message
from ..errors import InvalidArgumentError


def message_identity(message: Message) -> tuple[str, str]:
    """``(consumer, message)`` as the inboxes record them: the consumer that delivered it (the queue), and
    the message's msg id, or its stream and sequence when it has none."""
    delivery = message.delivery
    if delivery is None:
        raise InvalidArgumentError("the inbox needs a delivered message (one a broker handed to a handler)")
    identity = message.msg_id or f"{delivery.stream}#{delivery.sequence}"
    return delivery.consumer, identity[:255]
