"""The Schema Registry wire format read without the schema: the header, and Protobuf's message indexes."""

from __future__ import annotations

import pytest

from daemon.core.wire import WireError, frame, is_framed, message_indexes, payload, schema_id


def test_the_schema_id_is_the_four_bytes_after_the_magic_byte_big_endian() -> None:
    value = b"\x00\x00\x01\x00\x02rest"
    assert is_framed(value)
    assert schema_id(value) == 65538
    assert bytes(payload(value)) == b"rest"


@pytest.mark.parametrize(
    ("value", "says"),
    [(b'{"event":"x"}', "first byte is not 0"), (b"\x01\x00\x00\x00\x01", "first byte is not 0"),
     (b"\x00\x00\x01", "too short"), (b"", "first byte is not 0")],
)  # fmt: skip
def test_a_value_not_in_the_wire_format_is_refused_saying_why(value: bytes, says: str) -> None:
    with pytest.raises(WireError, match=says):
        schema_id(value)


def test_json_and_empty_values_are_never_taken_for_the_wire_format() -> None:
    assert not is_framed(b'{"a":1}')
    assert not is_framed(b"")
    assert not is_framed(None)


def test_a_single_zero_byte_stands_for_the_first_message() -> None:
    indexes, rest = message_indexes(memoryview(b"\x00message"))
    assert indexes == [0]
    assert bytes(rest) == b"message"


@pytest.mark.parametrize("indexes", [[1], [0, 2], [3, 0, 1], [70, 200]])
def test_message_indexes_are_zigzag_varints_count_first(indexes: list[int]) -> None:
    framed = frame(9, b"msg", indexes)
    found, rest = message_indexes(payload(framed))
    assert found == indexes
    assert bytes(rest) == b"msg"


def test_the_indexes_as_confluents_serializer_writes_them() -> None:
    # ProtobufSerializer's bytes for the second top-level message: count 1, index 1 (zig-zag: 2, 2).
    assert message_indexes(memoryview(b"\x02\x02\n"))[0] == [1]


@pytest.mark.parametrize(
    ("data", "says"),
    [(b"", "cut short"), (b"\x04\x02", "cut short"), (b"\x01", "a count of -1"), (b"\x02\x01", "negative index"),
     (b"\xff" * 11, "longer than 10 bytes")],
)  # fmt: skip
def test_message_indexes_that_do_not_read_are_refused_saying_why(data: bytes, says: str) -> None:
    with pytest.raises(WireError, match=says):
        message_indexes(memoryview(data))
