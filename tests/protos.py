"""Protobuf message classes for the tests and the bench, built from descriptors (no protoc here): ``acme/money.proto``
(``acme.Money``) and ``acme/lead.proto``, which imports it and ``google/protobuf/timestamp.proto`` and declares
``acme.Other`` (index 0), ``acme.LeadCreated`` (index 1: event, lead_id int64, budget Money, at Timestamp, tags,
status enum, score double, raw bytes) with the nested ``acme.LeadCreated.Note`` (indexes [1, 0])."""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

_OPTIONAL, _REPEATED = 1, 3
_DOUBLE, _INT64, _STRING, _MESSAGE, _BYTES, _ENUM = 1, 3, 9, 11, 12, 14


def files() -> tuple[descriptor_pb2.FileDescriptorProto, descriptor_pb2.FileDescriptorProto]:
    money = descriptor_pb2.FileDescriptorProto(name="acme/money.proto", package="acme", syntax="proto3")
    m = money.message_type.add(name="Money")
    m.field.add(name="currency", number=1, type=_STRING, label=_OPTIONAL)
    m.field.add(name="units", number=2, type=_INT64, label=_OPTIONAL)
    lead = descriptor_pb2.FileDescriptorProto(
        name="acme/lead.proto", package="acme", syntax="proto3",
        dependency=["acme/money.proto", "google/protobuf/timestamp.proto"],
    )  # fmt: skip
    other = lead.message_type.add(name="Other")
    other.field.add(name="x", number=1, type=_STRING, label=_OPTIONAL)
    created = lead.message_type.add(name="LeadCreated")
    fields = [("event", _STRING, ""), ("lead_id", _INT64, ""), ("budget", _MESSAGE, ".acme.Money"),
              ("at", _MESSAGE, ".google.protobuf.Timestamp"), ("status", _ENUM, ".acme.LeadCreated.Status"),
              ("score", _DOUBLE, ""), ("raw", _BYTES, "")]  # fmt: skip
    for number, (name, kind, type_name) in enumerate(fields, 1):
        field = created.field.add(name=name, number=number, type=kind, label=_OPTIONAL)
        if type_name:
            field.type_name = type_name
    created.field.add(name="tags", number=len(fields) + 1, type=_STRING, label=_REPEATED)
    note = created.nested_type.add(name="Note")
    note.field.add(name="text_body", number=1, type=_STRING, label=_OPTIONAL)
    status = created.enum_type.add(name="Status")
    status.value.add(name="NEW", number=0)
    status.value.add(name="QUALIFIED", number=1)
    return money, lead


def classes() -> dict[str, Any]:
    """The message classes by full name, from the default pool (added once per process)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName("acme/lead.proto")
    except KeyError:
        assert timestamp_pb2.DESCRIPTOR  # the import adds it to the default pool
        for proto in files():
            pool.Add(proto)
    names = ("acme.Money", "acme.Other", "acme.LeadCreated", "acme.LeadCreated.Note")
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name)) for name in names}


def serialized(proto: descriptor_pb2.FileDescriptorProto) -> str:
    """A file as the registry keeps a Protobuf schema in its serialized form (base64)."""
    return base64.b64encode(proto.SerializeToString()).decode()
