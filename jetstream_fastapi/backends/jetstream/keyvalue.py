"""Key-Value buckets on a NATS server (nats-py's ``KeyValue``), for the Key-Value inbox: read a key, and
create one only if it does not exist (the first writer wins), with a per-message TTL.

A bucket is looked up once per connection and created when missing (``history=1``; nats-py creates KV
streams with ``allow_msg_ttl``, which ``create(..., msg_ttl=)`` needs: nats-server 2.11 or later).
"""

from __future__ import annotations

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue


class KeyValues:
    """The buckets used on one connection."""

    def __init__(self, nc: NATS, timeout: float) -> None:
        self.nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self._buckets: dict[str, KeyValue] = {}

    async def _bucket(self, name: str) -> KeyValue:
        bucket = self._buckets.get(name)
        if bucket is None:
            try:
                bucket = await self._js.key_value(name)
            except nats.js.errors.BucketNotFoundError:
                # Two instances may both get here: the server takes the same config twice.
                bucket = await self._js.create_key_value(KeyValueConfig(bucket=name, history=1))
            self._buckets[name] = bucket
        return bucket

    async def get(self, bucket: str, key: str) -> bytes | None:
        """The value of ``key``; ``None`` if it has none (never written, deleted, or expired)."""
        try:
            entry = await (await self._bucket(bucket)).get(key)
        except nats.js.errors.KeyNotFoundError:  # deleted keys come as KeyNotFoundError too
            return None
        return entry.value or b""

    async def create(self, bucket: str, key: str, value: bytes, ttl: float) -> bool:
        """Write ``key`` unless it has a value; whether this call wrote it."""
        try:
            await (await self._bucket(bucket)).create(key, value, msg_ttl=ttl)
        except nats.js.errors.KeyWrongLastSequenceError:  # another writer was first
            return False
        return True
