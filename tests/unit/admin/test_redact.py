"""What aiohttp logs about requests the admin server cannot parse: the error, never the credentials in them.

A real AdminServer on 127.0.0.1 and raw requests over a socket; the log is what the root logger receives.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from daemon.admin.server import AdminServer
from daemon.admin.web import RedactCredentials, redact
from daemon.observe.metrics import Metrics

TOKEN = "adm1n-T0KEN-5ecret-value"


async def _send(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    answer = await reader.read(65536)
    writer.close()
    await writer.wait_closed()
    return answer


@pytest.mark.parametrize(
    "raw",
    [
        # An Authorization header over 8 KiB: aiohttp's parser quotes its first 100 bytes.
        b"GET /endpoints HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + TOKEN.encode() + b"A" * 9000 + b"\r\n\r\n",
        # Another header holding it, over-long too (the quote does not say which header it was).
        b"GET /endpoints HTTP/1.1\r\nHost: a\r\nX-Api-Key: " + TOKEN.encode() + b"B" * 9000 + b"\r\n\r\n",
        # A control character in it: the whole line is quoted.
        b"GET /endpoints HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + TOKEN.encode() + b"\x01\r\n\r\n",
        # A malformed header name before it.
        b"GET /endpoints HTTP/1.1\r\nHost: a\r\nAuthorization : Bearer " + TOKEN.encode() + b"\r\n\r\n",
        # In the request line.
        b"G\x01T /endpoints?token=" + TOKEN.encode() + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /endpoints?token=" + TOKEN.encode() + b"C" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
    ids=["long-authorization", "long-other-header", "control-char", "bad-name", "bad-method", "long-url"],
)
async def test_a_request_aiohttp_cannot_parse_is_logged_without_its_credentials(
    raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    server = AdminServer("127.0.0.1:0", Metrics(), lambda: None, token=TOKEN)
    await server.start()
    try:
        with caplog.at_level(logging.DEBUG):
            answer = await _send(server.port, raw)
            await asyncio.sleep(0.05)
    finally:
        await server.stop()
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    logged = [r for r in caplog.records if r.name.startswith("aiohttp")]
    assert logged, "aiohttp logged the bad request"
    text = caplog.text + "".join(f"{r.getMessage()}{r.exc_text or ''}" for r in logged)
    assert TOKEN not in text and TOKEN[:20] not in text
    assert "<redacted>" in text  # the record is kept, only its quotes are gone


def test_redact_keeps_the_error_and_drops_quotes_and_credentials() -> None:
    assert redact("Got more than 8190 bytes when reading: b'Bearer abc...'.") == (
        "Got more than 8190 bytes when reading: b'<redacted>'."
    )
    assert redact("bytearray(b'/x?token=abc')") == "b'<redacted>'"
    assert redact("header Authorization: Basic dXNlcjpwdw== seen") == "header Authorization: <redacted>"
    assert redact("token Bearer abc.def-ghi, then") == "token Bearer <redacted>, then"
    assert redact("Error handling request from 127.0.0.1") == "Error handling request from 127.0.0.1"


def test_the_filter_rewrites_a_record_with_a_traceback() -> None:
    try:
        raise ValueError("bad header b'Authorization: Bearer s3cret-token'")
    except ValueError:
        record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error %s", ("x",), exc_info=None)
        import sys

        record.exc_info = sys.exc_info()
    assert RedactCredentials().filter(record) is True
    assert record.exc_info is None and record.args is None
    assert record.getMessage() == "Error x"
    assert record.exc_text is not None and "ValueError" in record.exc_text and "s3cret" not in record.exc_text
