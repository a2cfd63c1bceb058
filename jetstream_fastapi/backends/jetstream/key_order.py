"""A key-ordered queue's partitioned stream on a real server (see :mod:`~jetstream_fastapi.core.key_order`):
a stream with no subjects of its own, sourcing the queue's subject from the stream that stores it through
a subject transform that puts each message's partition in front (the server computes it), work-queue
retention, the source's replicas and storage. nats-py's public ``StreamSource`` carries the transform.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging

from nats.aio.client import Client as NATS
from nats.js.api import RetentionPolicy, StreamConfig, StreamSource, SubjectTransform
from nats.js.errors import APIError, NotFoundError
from nats.js.manager import JetStreamManager

from ...core.key_order import partition_transform
from ...errors import ConsumerConfigError
from ..base import PartitionedStream
from .idle import last_sequence
from .streams import StreamRegistry

logger = logging.getLogger("jetstream_fastapi")

PARTITIONS_METADATA = "jetstream_fastapi.partitions"
"""The stream metadata key holding the number of partitions it was created with."""


async def ensure_partitioned_stream(
    jsm: JetStreamManager, registry: StreamRegistry, wanted: PartitionedStream
) -> PartitionedStream:
    """Create the stream ``wanted`` if missing; what the existing one is made of otherwise."""
    try:
        return _made_of(wanted.name, (await jsm.stream_info(wanted.name)).config)
    except NotFoundError:
        pass
    source = await registry.config_of(wanted.source)
    config = StreamConfig(
        name=wanted.name,
        description=f"key-ordered partitions of {wanted.subject} in {wanted.source} (jetstream-fastapi)",
        sources=[
            StreamSource(
                name=wanted.source,
                opt_start_time=_dt.datetime.now(_dt.UTC) if wanted.from_now else None,
                subject_transforms=[
                    SubjectTransform(src=wanted.subject, dest=partition_transform(wanted.subject, wanted.partitions))
                ],
            )
        ],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=source.storage,
        num_replicas=source.num_replicas,
        metadata={PARTITIONS_METADATA: str(wanted.partitions)},
    )
    try:
        await jsm.add_stream(config)
    except APIError as error:
        try:  # another instance created it first (with another config: the front says what differs)
            return _made_of(wanted.name, (await jsm.stream_info(wanted.name)).config)
        except NotFoundError:
            raise ConsumerConfigError(
                f"could not create the partitioned stream {wanted.name!r}: {error.description}"
            ) from None
    logger.info(
        "created stream %s: %s of %s, %d partitions", wanted.name, wanted.subject, wanted.source, wanted.partitions
    )
    return wanted


def _made_of(name: str, config: StreamConfig) -> PartitionedStream:
    sources = config.sources or []
    transforms = (sources[0].subject_transforms or []) if sources else []
    partitions = (config.metadata or {}).get(PARTITIONS_METADATA, "")
    if len(sources) != 1 or len(transforms) != 1 or not partitions.isdigit():
        raise ConsumerConfigError(
            f"stream {name!r} exists and is not a partitioned stream made by this library: delete it or "
            f"use another queue name"
        )
    return PartitionedStream(name, sources[0].name, transforms[0].src, int(partitions))


async def caught_up(nc: NATS, jsm: JetStreamManager, sourced: PartitionedStream) -> bool:
    """Whether the partitioned stream has copied the last message of its subject from its source (the
    server sources in its own time, after the PubAck). The source's position is in the stream info's
    ``sources[].seq``, which nats-py's ``StreamSourceInfo`` lacks: a raw request."""
    last = await last_sequence(jsm, sourced.source, sourced.subject)
    if not last:
        return True
    reply = await nc.request(f"$JS.API.STREAM.INFO.{sourced.name}", b"", timeout=5.0)
    sources = json.loads(reply.data).get("sources") or [{}]
    return int(sources[0].get("seq", 0)) >= last
