"""The Schema Registry's REST API, the two reads the router makes (Confluent's API; Karapace and Apicurio's
``/apis/ccompat/v7`` serve it too):

- ``GET /schemas/ids/{id}?format=serialized``: ``{"schema": ..., "schemaType": "AVRO"|"PROTOBUF"|"JSON",
  "references": [{"name", "subject", "version"}]}`` (``schemaType`` left out for Avro; ``format=serialized`` asks for a
  Protobuf schema as a base64 ``FileDescriptorProto``, as Confluent's own deserializer does);
- ``GET /subjects/{subject}/versions/{version}?format=serialized``: a referenced schema, the same fields.

The registry's URL is the platform's own config, so the SSRF guard of deliveries does not apply to it. TLS with the
system's or a given CA and an optional client certificate; basic auth, or a bearer token from a variable or from a
file read again for each request (a mounted token that is rotated). A 404 is an unknown id (``NotFound``) only when
the body is the registry's own error (``error_code`` 404xx): any other answer, an unreachable registry or a timeout is
``RegistryError``, a fault to wait out (a wrong URL answers 404 for every id: that must not make every event
invalid).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec

from daemon.core.config import SchemaRegistryConfig
from daemon.core.errors import reason_of


class RegistryError(Exception):
    """The registry could not answer (unreachable, a timeout, a 5xx, refused credentials, an answer not understood)."""


class NotFound(Exception):
    """The registry answered that it does not know the schema id (or a referenced subject or version)."""


class Reference(msgspec.Struct, frozen=True):
    name: str
    subject: str
    version: int


class Answer(msgspec.Struct, frozen=True):
    """A schema as the registry answers it (its other fields, ``id``, ``subject``, ``metadata``..., are not read)."""

    schema: str
    schemaType: str = "AVRO"  # the registry's own name
    references: list[Reference] = []


class _Error(msgspec.Struct):
    error_code: int = 0
    message: str = ""


_answer = msgspec.json.Decoder(Answer)
_error = msgspec.json.Decoder(_Error)
_MAX_ANSWER_BYTES = 16 * 1024 * 1024


class RegistryClient:
    """One aiohttp session to the registry; ``start`` before use, ``close`` after (safe twice)."""

    def __init__(self, config: SchemaRegistryConfig, environ: Mapping[str, str]) -> None:
        assert config.url is not None  # noqa: S101 - validated: needed once a topic reads the wire format
        self.url = config.url.rstrip("/")
        self._ssl: ssl.SSLContext | bool = True
        if self.url.lower().startswith("https://"):
            context = ssl.create_default_context(cafile=config.ca_file)
            if config.cert_file is not None:
                password = environ.get(config.key_password_env) if config.key_password_env else None
                context.load_cert_chain(config.cert_file, config.key_file, password=password or "")
            self._ssl = context
        self._auth: str | None = None
        if config.username is not None and config.password_env is not None:
            self._auth = aiohttp.encode_basic_auth(config.username, environ[config.password_env])
        elif config.token_env is not None:
            self._auth = f"Bearer {environ[config.token_env]}"
        self._token_file = config.token_file
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s, connect=config.connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the credentials
        return f"RegistryClient({self.url!r})"

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=8),
                headers={"Accept": "application/vnd.schemaregistry.v1+json, application/json"},
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def schema(self, schema_id: int) -> Answer:
        """The schema registered under ``schema_id``."""
        return await self._get(f"/schemas/ids/{schema_id}", f"schema id {schema_id}")

    async def version(self, subject: str, version: int) -> Answer:
        """Version ``version`` of ``subject`` (a reference's)."""
        return await self._get(f"/subjects/{quote(subject, safe='')}/versions/{version}",
                               f"{subject!r} version {version}")  # fmt: skip

    async def _get(self, path: str, what: str) -> Answer:
        if self._session is None:
            raise RegistryError("the registry client is not started")
        headers = {}
        auth = self._authorization()
        if auth is not None:
            headers["Authorization"] = auth
        try:
            async with self._session.get(self.url + path, params={"format": "serialized"}, headers=headers) as answer:
                body = await answer.content.read(_MAX_ANSWER_BYTES)
                status = answer.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RegistryError(f"{what}: {reason_of(exc) if str(exc) else type(exc).__name__}") from None
        if status == 200:
            try:
                return _answer.decode(body)
            except msgspec.DecodeError as exc:
                raise RegistryError(f"{what}: an answer that is not a schema ({exc})") from None
        error = _error_of(body)
        if status == 404 and error is not None and 40400 <= error.error_code < 40500:
            raise NotFound(f"{what}: {error.message or 'not found'} (error {error.error_code})")
        detail = f": {error.message} (error {error.error_code})" if error is not None and error.message else ""
        if status == 404:
            detail = " without the registry's error body (is schema_registry.url the registry's base URL?)"
        raise RegistryError(f"{what}: HTTP {status}{detail}")

    def _authorization(self) -> str | None:
        if self._token_file is None:
            return self._auth
        try:
            token = Path(self._token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise RegistryError(f"cannot read schema_registry.token_file: {exc.strerror or exc}") from None
        return f"Bearer {token}"


def _error_of(body: bytes) -> _Error | None:
    try:
        error: Any = _error.decode(body)
    except msgspec.DecodeError:
        return None
    return error if isinstance(error, _Error) and error.error_code else None
