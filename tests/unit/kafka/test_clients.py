"""``daemon.kafka.clients``' wrap of aiokafka's ``AIOKafkaConnection.send`` and ``_send_sasl_token``: a real
connection over a real socket that its peer reset, on uvloop (the daemon's loop), no broker (the write fails before
any request reaches one)."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest
import uvloop
from aiokafka.conn import AIOKafkaConnection
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest

import daemon.kafka.clients  # noqa: F401  (wraps AIOKafkaConnection.send and _send_sasl_token)
from daemon.kafka.clients import consumer_broken


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


class _Coordinator:
    """Stand-in for aiokafka's GroupCoordinator: the attributes ``consumer_broken`` reads."""

    def __init__(self, loop: asyncio.AbstractEventLoop, **tasks: Any) -> None:
        self._closing = loop.create_future()
        self._coordination_task = tasks.get("coordination")
        self._heartbeat_task = tasks.get("heartbeat")
        self._commit_refresh_task = tasks.get("commit_refresh")


class _Fetcher:
    def __init__(self, task: Any) -> None:
        self._closed = False
        self._fetch_task = task


class _Consumer:
    """Stand-in for AIOKafkaConsumer as ``consumer_broken`` reads it (its ``_closed``, ``_coordinator``,
    ``_fetcher``), with real tasks that run, return, raise or are cancelled."""

    def __init__(self, coordinator: _Coordinator | None, fetcher: _Fetcher | None) -> None:
        self._closed = False
        self._coordinator, self._fetcher = coordinator, fetcher


async def _ended(how: str) -> asyncio.Task[None]:
    async def body() -> None:
        if how == "raised":
            raise RuntimeError("the handler is closed")
        if how in ("running", "cancelled"):
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await asyncio.sleep(0)
    if how == "cancelled":
        task.cancel()
    if how != "running":
        await asyncio.gather(task, return_exceptions=True)
    return task


@pytest.mark.parametrize(
    ("task", "how", "broken"),
    [
        ("coordination", "raised", ("coordination", RuntimeError)),
        ("coordination", "cancelled", ("coordination", None)),
        ("coordination", "returned", ("coordination", None)),  # it runs until the consumer closes
        ("heartbeat", "raised", ("heartbeat", RuntimeError)),
        ("heartbeat", "returned", None),  # the member left its group: started again by the next join
        ("heartbeat", "cancelled", None),  # stopped by aiokafka for a rejoin
        ("commit_refresh", "raised", ("commit refresh", RuntimeError)),
        ("commit_refresh", "returned", None),
        ("fetcher", "raised", ("fetcher", RuntimeError)),
        ("fetcher", "returned", ("fetcher", None)),  # aiokafka's fetcher swallows a cancellation and returns
        ("fetcher", "running", None),
    ],
)
def test_a_consumer_is_broken_when_a_task_aiokafka_never_starts_again_has_ended(
    task: str, how: str, broken: tuple[str, type[BaseException] | None] | None
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        running = {name: await _ended("running") for name in ("coordination", "heartbeat", "commit_refresh")}
        fetch = await _ended("running")
        if task == "fetcher":
            fetch = await _ended(how)
        else:
            running[task] = await _ended(how)
        coordinator, fetcher = _Coordinator(loop, **running), _Fetcher(fetch)
        consumer = _Consumer(coordinator, fetcher)
        found = consumer_broken(consumer)
        if broken is None:
            assert found is None
        else:
            assert found is not None and found[0] == broken[0]
            assert (type(found[1]) if found[1] is not None else None) is broken[1]
        # closing, closed or not started: never broken
        coordinator._closing.set_result(None)
        assert consumer_broken(consumer) is None
        assert consumer_broken(_Consumer(None, None)) is None
        for each in [*running.values(), fetch]:
            each.cancel()
        await asyncio.gather(*running.values(), fetch, return_exceptions=True)

    uvloop.run(scenario())
