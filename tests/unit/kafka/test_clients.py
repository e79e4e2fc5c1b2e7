"""``daemon.kafka.clients``' wrap of aiokafka's ``AIOKafkaConnection.send`` and ``_send_sasl_token``: a real
connection over a real socket that its peer reset, on uvloop (the daemon's loop), no broker (the write fails before
any request reaches one)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
import uvloop
from aiokafka.conn import AIOKafkaConnection
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest

import daemon.kafka.clients  # noqa: F401  (wraps AIOKafkaConnection.send and _send_sasl_token)


async def _reset_connection() -> AIOKafkaConnection:
    """An aiokafka connection whose peer closed it with a reset: its reader holds the error, not an end, so the
    connection still says it is connected, and its transport is closed."""
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        accepted.set_result(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    (await accepted).close()  # SO_LINGER 0: a reset, as a broker killed with kill -9 leaves
    for _ in range(100):
        if writer.transport.is_closing():
            break
        await asyncio.sleep(0.01)
    server.close()
    conn = AIOKafkaConnection("127.0.0.1", port)
    conn._reader, conn._writer = reader, writer  # what connect() sets, without a broker's handshake
    conn._versions = {MetadataRequest.API_KEY: (0, 12)}
    conn._read_task = asyncio.get_running_loop().create_future()
    return conn


def test_a_write_on_a_connection_its_broker_reset_is_a_connection_error_on_uvloop() -> None:
    async def scenario() -> None:
        conn = await _reset_connection()
        assert conn.connected(), "the case itself: aiokafka still takes the connection for connected"
        with pytest.raises(KafkaConnectionError, match="broken"):
            await conn.send(MetadataRequest([]))
        assert conn._writer is None, "the connection is closed, as aiokafka closes one whose write failed"

    uvloop.run(scenario())


def test_a_sasl_token_written_on_a_connection_its_broker_reset_is_a_connection_error_on_uvloop() -> None:
    """The SASL handshake writes its tokens past ``send``: a broker resetting a connection while it authenticates
    must end the connect with a connection error (which aiokafka's callers try again), not uvloop's RuntimeError."""

    async def scenario() -> None:
        conn = await _reset_connection()
        with pytest.raises(KafkaConnectionError, match="broken"):
            await conn._send_sasl_token(b"\x00router\x00secret")
        assert conn._writer is None

    uvloop.run(scenario())
