"""Writer schemas fetched by id into the cache the type readers decode with, each id once however many ask.

``load(ids)`` returns once every id asked for is in the cache as one of: a compiled schema; ``Unknown`` (the registry
does not know the id, or its schema cannot be used: the events written with it are ``invalid_event``, naming the id);
``Failing`` (the registry could not answer: the events wait, their partitions held until the entry's retry time, the
back-off doubling from 0.5 s up to ``retry_backoff_max_s`` while the registry keeps failing). ``problem`` says why the
router is not ready while the registry fails (``/readyz``). A referenced schema is fetched by subject and version
(its own references first) and compiled with the schema that refers to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from daemon.core.clock import utc_now_iso
from daemon.core.config import SchemaRegistryConfig
from daemon.core.schemas import (
    Failing,
    Named,
    ProtobufJson,
    SchemaCache,
    SchemaError,
    SchemaText,
    Unknown,
    compile_schema,
)  # fmt: skip
from daemon.kafka.contact import Throttle, held_note
from daemon.observe.metrics import Metrics
from daemon.schema_registry.client import Answer, NotFound, Reference, RegistryClient, RegistryError

log = logging.getLogger(__name__)

BACKOFF_S = 0.5
_MAX_REFERENCES = 100  # a schema with more (a reference cycle the registry let in) cannot be used


def loader_for(
    config: SchemaRegistryConfig, environ: Mapping[str, str], cache: SchemaCache, metrics: Metrics
) -> SchemaLoader | None:
    """The loader of the configured registry (None without ``schema_registry.url``)."""
    if config.url is None:
        return None
    return SchemaLoader(RegistryClient(config, environ), cache, config, metrics)


class SchemaLoader:
    """Fills ``cache`` from ``client``; ``start``/``close`` the client with it."""

    def __init__(
        self, client: RegistryClient, cache: SchemaCache, config: SchemaRegistryConfig, metrics: Metrics
    ) -> None:
        self._client = client
        self.cache = cache
        self._backoff_max_s = config.retry_backoff_max_s
        self._protobuf = ProtobufJson(
            json_names=config.protobuf_json_names, include_defaults=config.protobuf_include_defaults
        )
        self._metrics = metrics
        self._pending: dict[int, asyncio.Task[None]] = {}
        self._failures = 0  # consecutive, over every id
        self._failing_since: str | None = None
        self._reason = ""
        self._logged = Throttle()
        for outcome in ("ok", "unknown", "unusable", "error"):
            metrics.schema_fetches.labels(outcome)

    async def start(self) -> None:
        await self._client.start()

    async def close(self) -> None:
        for task in self._pending.values():
            task.cancel()
        await asyncio.gather(*self._pending.values(), return_exceptions=True)
        await self._client.close()

    def problem(self) -> str | None:
        """Why records wait for their schemas (the registry failing), or None."""
        if self._failing_since is None:
            return None
        return (f"the Schema Registry at {self._client.url} has not given schemas since {self._failing_since} "
                f"({self._reason}): the partitions that need them wait")  # fmt: skip

    async def load(self, ids: set[int]) -> None:
        """Every id of ``ids`` in the cache (each fetched once, whoever else is waiting for it). Never raises for the
        registry's faults: they are ``Failing`` entries."""
        wanted = self.cache.wanted(ids, int(time.time() * 1000))
        if not wanted:
            return
        tasks = []
        for schema_id in wanted:
            task = self._pending.get(schema_id)
            if task is None:
                task = asyncio.create_task(self._fetch(schema_id), name=f"schema-{schema_id}")
                self._pending[schema_id] = task
                task.add_done_callback(lambda _, sid=schema_id: self._pending.pop(sid, None))  # type: ignore[misc]
            tasks.append(task)
        # Shielded: a caller that stops waiting (a shutdown) does not cancel a fetch another caller waits for.
        await asyncio.gather(*(asyncio.shield(t) for t in tasks))

    async def _fetch(self, schema_id: int) -> None:
        try:
            answer = await self._client.schema(schema_id)
            source = SchemaText(
                kind=answer.schemaType, text=answer.schema, references=await self._references(answer.references)
            )
            schema = compile_schema(source, self._protobuf)
        except NotFound as exc:
            self._metrics.schema_fetches.labels("unknown").inc()
            self.cache.put(schema_id, Unknown(f"schema id {schema_id} is not known to the registry ({exc})"))
            self._answered()
        except SchemaError as exc:
            self._metrics.schema_fetches.labels("unusable").inc()
            log.warning("schema id %d cannot be used: %s (its events are invalid_event)", schema_id, exc)
            self.cache.put(schema_id, Unknown(f"schema id {schema_id} cannot be used: {exc}"))
            self._answered()
        except RegistryError as exc:
            self._failed(schema_id, str(exc))
        except Exception as exc:  # a bug: waited out like a fault, shown with its traceback
            log.exception("fetching schema id %d failed", schema_id)
            self._failed(schema_id, f"{type(exc).__name__}: {exc}")
        else:
            self._metrics.schema_fetches.labels("ok").inc()
            self.cache.put(schema_id, schema)
            self._answered()

    async def _references(self, references: list[Reference]) -> list[Named]:
        """The referenced schemas, each after the ones it refers to itself, each once."""
        out: list[Named] = []
        seen: set[str] = set()

        async def visit(refs: list[Reference]) -> None:
            for ref in refs:
                if ref.name in seen:
                    continue
                seen.add(ref.name)
                if len(seen) > _MAX_REFERENCES:
                    raise SchemaError(f"more than {_MAX_REFERENCES} references")
                try:
                    answer: Answer = await self._client.version(ref.subject, ref.version)
                except NotFound as exc:
                    raise SchemaError(f"its reference {ref.name!r} is not in the registry ({exc})") from None
                await visit(answer.references)
                out.append(Named(ref.name, answer.schema))

        await visit(references)
        return out

    def _answered(self) -> None:
        if self._failing_since is not None:
            log.info("the Schema Registry at %s answers again (failing since %s)", self._client.url,
                     self._failing_since)  # fmt: skip
        self._failures = 0
        self._failing_since = None

    def _failed(self, schema_id: int, reason: str) -> None:
        self._metrics.schema_fetches.labels("error").inc()
        self._failures += 1
        wait = min(self._backoff_max_s, BACKOFF_S * 2 ** min(self._failures - 1, 30))
        self.cache.put(schema_id, Failing(f"the Schema Registry could not give {reason}", int((time.time() + wait)
                                                                                                * 1000)))  # fmt: skip
        self._reason = reason
        if self._failing_since is None:
            self._failing_since = utc_now_iso()
        held = self._logged.ready()
        if held is not None:
            log.warning("the Schema Registry at %s could not give %s; its records wait, asked again in %.1f s%s",
                        self._client.url, reason, wait, held_note(held))  # fmt: skip
