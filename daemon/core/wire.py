"""The Schema Registry wire format (Confluent's framing), read without the schema. Pure.

A framed value is a zero byte (the magic byte), the writer's schema id as four bytes big-endian, then the
encoded value. Protobuf puts the message indexes between the id and the message: how many, then each index,
all zig-zag varints; the single byte 0 stands for ``[0]`` (the file's first message, the common case).
"""

from __future__ import annotations

MAGIC = 0
HEADER_BYTES = 5


class WireError(ValueError):
    """A value that is not in the wire format, or whose message indexes cannot be read; the text says which."""


def is_framed(value: bytes | None) -> bool:
    """True when ``value`` starts with the magic byte (a JSON document never does)."""
    return bool(value) and value[0] == MAGIC  # type: ignore[index]


def schema_id(value: bytes) -> int:
    """The writer's schema id of a framed value; WireError when ``value`` is not framed."""
    if len(value) < HEADER_BYTES or value[0] != MAGIC:
        if not value or value[0] != MAGIC:
            raise WireError("not in the Schema Registry wire format (its first byte is not 0)")
        raise WireError(f"too short for the Schema Registry wire format ({len(value)} bytes)")
    return int.from_bytes(value[1:HEADER_BYTES], "big")


def payload(value: bytes) -> memoryview:
    """What follows the header of a framed value (the encoded value; for Protobuf, its indexes first)."""
    return memoryview(value)[HEADER_BYTES:]


def message_indexes(data: memoryview) -> tuple[list[int], memoryview]:
    """The Protobuf message indexes at the start of ``data`` and the message after them. WireError when they do not
    read (a count or an index negative or past the end)."""
    count, at = _zigzag(data, 0)
    if count == 0:
        return [0], data[at:]
    if count < 0 or count > 100:
        raise WireError(f"message indexes: a count of {count}")
    indexes = []
    for _ in range(count):
        index, at = _zigzag(data, at)
        if index < 0:
            raise WireError(f"message indexes: a negative index ({index})")
        indexes.append(index)
    return indexes, data[at:]


def _zigzag(data: memoryview, at: int) -> tuple[int, int]:
    """One zig-zag varint from ``data[at:]``: its value and where the next one starts."""
    raw = shift = 0
    while True:
        if at >= len(data):
            raise WireError("message indexes: cut short")
        byte = data[at]
        at += 1
        raw |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 63:
            raise WireError("message indexes: a varint longer than 10 bytes")
    return (raw >> 1) ^ -(raw & 1), at


def frame(schema_id: int, encoded: bytes, indexes: list[int] | None = None) -> bytes:
    """A framed value (the tests' and the bench's; the router itself never writes one)."""
    head = bytes([MAGIC]) + schema_id.to_bytes(4, "big")
    if indexes is None:
        return head + encoded
    if indexes == [0]:
        return head + b"\x00" + encoded
    return head + b"".join(_varint(n) for n in (len(indexes), *indexes)) + encoded


def _varint(n: int) -> bytes:
    raw = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        if raw < 0x80:
            out.append(raw)
            return bytes(out)
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
