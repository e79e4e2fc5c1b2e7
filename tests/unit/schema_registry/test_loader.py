"""The loader and the registry's client over real sockets, against the tests' small registry (tests/registry.py):
each id fetched once however many ask, unknown ids and unusable schemas remembered as such, a registry that fails
waited out with a doubling back-off and named for /readyz, references resolved, credentials sent."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.core.config import SchemaRegistryConfig
from daemon.core.schemas import Failing, Schema, SchemaCache, Unknown
from daemon.observe.metrics import Metrics
from daemon.schema_registry import RegistryClient, SchemaLoader
from tests import protos
from tests.registry import SchemaRegistry

LEAD = json.dumps({"type": "record", "name": "Lead", "namespace": "com.acme", "fields": [
    {"name": "event", "type": "string"}]})  # fmt: skip


@pytest.fixture
async def registry() -> AsyncIterator[SchemaRegistry]:
    r = await SchemaRegistry().start()
    yield r
    await r.stop()


async def _loader(url: str, environ: dict[str, str] | None = None, **settings: Any) -> SchemaLoader:
    config = SchemaRegistryConfig(url=url, **settings)
    loader = SchemaLoader(RegistryClient(config, environ or {}), SchemaCache(), config, Metrics())
    await loader.start()
    return loader


async def test_each_schema_id_is_fetched_once_however_many_wait_for_it(registry: SchemaRegistry) -> None:
    schema_id = registry.add("leads-value", LEAD)
    loader = await _loader(registry.url)
    try:
        await asyncio.gather(*(loader.load({schema_id}) for _ in range(20)))
        await loader.load({schema_id})
        assert registry.reads == {f"/schemas/ids/{schema_id}": 1}
        entry = loader.cache.get(schema_id)
        assert isinstance(entry, Schema) and entry.name == "com.acme.Lead"
        assert loader.problem() is None
    finally:
        await loader.close()


async def test_an_id_the_registry_does_not_know_is_remembered_as_unknown(registry: SchemaRegistry) -> None:
    loader = await _loader(registry.url)
    try:
        await loader.load({404})
        await loader.load({404})
        assert loader.cache.get(404) == Unknown(
            "schema id 404 is not known to the registry (schema id 404: Schema 404 not found (error 40403))"
        )
        assert registry.reads == {"/schemas/ids/404": 1}
        assert loader.problem() is None  # the registry answered
    finally:
        await loader.close()


async def test_a_failing_registry_is_asked_again_later_each_time_later_and_named_until_it_answers(
    registry: SchemaRegistry,
) -> None:
    schema_id = registry.add("leads-value", LEAD)
    loader = await _loader(registry.url, retry_backoff_max_s=1)
    try:
        registry.failing = True
        waits = []
        for _ in range(3):
            before = int(time.time() * 1000)
            await loader.load({schema_id})
            entry = loader.cache.get(schema_id)
            assert isinstance(entry, Failing) and "HTTP 503" in entry.reason
            waits.append(entry.retry_at_ms - before)
            await loader.load({schema_id})  # not due yet: not asked
            loader.cache.put(schema_id, Failing(entry.reason, 0))  # due now
        assert registry.reads[f"/schemas/ids/{schema_id}"] == 3
        # Never sooner than the back-off (0.5 s, then capped at 1 s; a millisecond lost to truncation); later only by
        # the time the registry's answer took, which a busy machine stretches.
        assert 499 <= waits[0] < 500 + 3000 and 999 <= waits[1] < 1000 + 3000 and 999 <= waits[2] < 1000 + 3000
        problem = loader.problem()
        assert problem is not None and registry.url in problem and "HTTP 503" in problem and "wait" in problem
        registry.failing = False
        await loader.load({schema_id})
        assert isinstance(loader.cache.get(schema_id), Schema)
        assert loader.problem() is None
    finally:
        await loader.close()


async def test_a_registry_nobody_listens_for_is_a_wait_not_an_unknown_id(registry: SchemaRegistry) -> None:
    await registry.stop()
    loader = await _loader(registry.url)
    try:
        await loader.load({1})
        entry = loader.cache.get(1)
        assert isinstance(entry, Failing) and "schema id 1" in entry.reason
        assert loader.problem() is not None
    finally:
        await loader.close()


async def test_a_404_that_is_not_the_registrys_own_is_a_wait_naming_the_url(registry: SchemaRegistry) -> None:
    loader = await _loader(registry.url + "/apis/ccompat/v7")  # a path this registry does not serve
    try:
        await loader.load({1})
        entry = loader.cache.get(1)
        assert isinstance(entry, Failing)
        assert "HTTP 404 without the registry's error body (is schema_registry.url the registry's base URL?)" in (
            entry.reason
        )
    finally:
        await loader.close()


async def test_references_are_fetched_by_subject_and_version_and_compiled_with_the_schema(
    registry: SchemaRegistry,
) -> None:
    money, lead = protos.files()
    registry.add("money", protos.serialized(money), "PROTOBUF")
    ref = {"name": "acme/money.proto", "subject": "money", "version": 1}
    schema_id = registry.add("leads-value", protos.serialized(lead), "PROTOBUF", [ref])
    loader = await _loader(registry.url)
    try:
        await loader.load({schema_id})
        entry = loader.cache.get(schema_id)
        assert isinstance(entry, Schema) and entry.kind == "PROTOBUF"
        assert registry.reads == {f"/schemas/ids/{schema_id}": 1, "/subjects/money/versions/1": 1}
    finally:
        await loader.close()


async def test_a_schema_whose_reference_is_missing_cannot_be_used(registry: SchemaRegistry) -> None:
    _, lead = protos.files()
    ref = {"name": "acme/money.proto", "subject": "money", "version": 3}
    schema_id = registry.add("leads-value", protos.serialized(lead), "PROTOBUF", [ref])
    loader = await _loader(registry.url)
    try:
        await loader.load({schema_id})
        entry = loader.cache.get(schema_id)
        assert isinstance(entry, Unknown)
        assert entry.reason.startswith(f"schema id {schema_id} cannot be used: its reference 'acme/money.proto'")
    finally:
        await loader.close()


async def test_basic_auth_is_sent_and_refused_credentials_are_a_wait(registry: SchemaRegistry) -> None:
    schema_id = registry.add("leads-value", LEAD)
    registry.auth = "Basic " + base64.b64encode(b"router:s3cret").decode()
    good = await _loader(registry.url, {"SR_PW": "s3cret"}, username="router", password_env="SR_PW")
    bad = await _loader(registry.url, {"SR_PW": "wrong"}, username="router", password_env="SR_PW")
    try:
        await good.load({schema_id})
        assert isinstance(good.cache.get(schema_id), Schema)
        await bad.load({schema_id})
        entry = bad.cache.get(schema_id)
        assert isinstance(entry, Failing) and "HTTP 401: Unauthorized (error 40101)" in entry.reason
        assert "s3cret" not in entry.reason and "wrong" not in str(bad.problem())
    finally:
        await good.close()
        await bad.close()


async def test_a_bearer_token_file_is_read_again_for_each_request(registry: SchemaRegistry, tmp_path: Path) -> None:
    first, second = registry.add("a", LEAD), registry.add("b", '"string"')
    token = tmp_path / "token"
    token.write_text("one\n")
    loader = await _loader(registry.url, token_file=str(token))
    try:
        registry.auth = "Bearer one"
        await loader.load({first})
        token.write_text("two")  # rotated
        registry.auth = "Bearer two"
        await loader.load({second})
        assert isinstance(loader.cache.get(first), Schema) and isinstance(loader.cache.get(second), Schema)
    finally:
        await loader.close()


async def test_tls_with_the_given_ca_and_a_client_certificate() -> None:
    data = Path(__file__).resolve().parents[2] / "data"
    cert, key = str(data / "tls-cert.pem"), str(data / "tls-key.pem")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    server.load_verify_locations(cert)
    server.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no answer
    registry = await SchemaRegistry(tls=server).start()
    schema_id = registry.add("leads-value", LEAD)
    with_cert = await _loader(registry.url, ca_file=cert, cert_file=cert, key_file=key)
    without = await _loader(registry.url, ca_file=cert)
    system_ca = await _loader(registry.url, cert_file=cert, key_file=key)
    try:
        await with_cert.load({schema_id})
        assert isinstance(with_cert.cache.get(schema_id), Schema)
        for refused in (without, system_ca):
            await refused.load({schema_id})
            assert isinstance(refused.cache.get(schema_id), Failing)
    finally:
        for loader in (with_cert, without, system_ca):
            await loader.close()
        await registry.stop()
