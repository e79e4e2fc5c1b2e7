"""A record batch's bytes as the broker keeps them, for a batch that cannot be decoded (so it can be kept aside).

A plain Fetch request for one partition from the batch's offset, answered by the partition's leader; the
batch is cut out of the answer by the record-batch header of Kafka's wire format (v2: base offset,
length, last offset delta), without decompressing anything.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from daemon.core.errors import NotFound
from daemon.kafka.clients import close_consumer, fetch_raw, reader

_HEADER = struct.Struct(">qi")  # base offset, batch length (of what follows these 12 bytes)
_LAST_OFFSET_DELTA = struct.Struct(">i")
_LAST_OFFSET_DELTA_AT = 23  # base offset 8, length 4, leader epoch 4, magic 1, crc 4, attributes 2
_MAX_BYTES = 64 * 1024 * 1024


class Batch(tuple[int, int, bytes]):
    """(base offset, next offset, the batch's bytes)."""

    @property
    def base(self) -> int:
        return self[0]

    @property
    def next_offset(self) -> int:
        return self[1]

    @property
    def raw(self) -> bytes:
        return self[2]


def batches(data: bytes) -> list[Batch]:
    """The complete record batches in a fetch answer's record set, in order."""
    out: list[Batch] = []
    pos = 0
    while pos + _HEADER.size <= len(data):
        base, length = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if length <= 0 or end > len(data) or pos + _LAST_OFFSET_DELTA_AT + 4 > end:
            break  # a partial batch at the end of the answer
        (delta,) = _LAST_OFFSET_DELTA.unpack_from(data, pos + _LAST_OFFSET_DELTA_AT)
        out.append(Batch((base, base + delta + 1, bytes(data[pos:end]))))
        pos = end
    return out


async def raw_batch(client_options: Mapping[str, Any], topic: str, partition: int, offset: int) -> Batch:
    """The batch of ``topic[partition]`` that holds ``offset``; NotFound when the broker has none there."""
    consumer = reader(client_options, auto_offset_reset="latest")
    await consumer.start()
    try:
        try:
            data = await fetch_raw(consumer, topic, partition, offset, _MAX_BYTES)
        except LookupError as exc:
            raise NotFound(str(exc)) from None
        for batch in batches(data):
            if batch.base <= offset < batch.next_offset:
                return batch
        raise NotFound(f"no batch holds {topic}[{partition}]@{offset}")
    finally:
        await close_consumer(consumer)
