"""A small Schema Registry for the tests: exactly the REST calls Confluent's serializers and the router make, on
127.0.0.1 (aiohttp). Not a real registry: none of Confluent's Schema Registry, Karapace or Apicurio runs here
(Confluent's is not on the package registries this machine reaches; Karapace is not on PyPI any more and needs
Kafka; Apicurio's app on Maven Central is a Quarkus application that needs Quarkus' build step before it runs).

The calls, as Confluent's Schema Registry answers them:

- ``POST /subjects/{subject}/versions``: register ``{"schema", "schemaType", "references"}`` under a subject; the same
  schema (text, type and references) keeps its id, a new one gets the next id and the subject's next version;
- ``POST /subjects/{subject}``: look a schema up in a subject (the Protobuf serializer does, for its references);
- ``GET /schemas/ids/{id}``: the schema of an id (``schemaType`` left out for Avro, as the registry does);
- ``GET /subjects/{subject}/versions/{version}`` (``latest`` too): a subject's version;
- ``GET /subjects``, ``GET /subjects/{subject}/versions``.

Errors are the registry's: ``{"error_code": 40401|40402|40403, "message": ...}`` with a 404. ``?format=serialized`` is
accepted and changes nothing: the Python serializers register Protobuf schemas in that form already. What the router
asked for is kept (``reads``), and the registry can be made to fail (``failing``: a 503 for every read of a schema;
``stop``/``start``: nothing listening on its port).
"""

from __future__ import annotations

import json
import ssl
from collections import Counter
from typing import Any

from aiohttp import web

from daemon.tools.embedded import free_port

_CONTENT = "application/vnd.schemaregistry.v1+json"


class SchemaRegistry:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._tls = tls
        self.schemas: list[dict[str, Any]] = []  # id - 1 -> {"schema", "schemaType", "references"}
        self.subjects: dict[str, list[int]] = {}  # subject -> ids, by version
        self.reads: Counter[str] = Counter()  # path of each GET the router made (with format=serialized)
        self.failing = False
        self.auth: str | None = None  # an Authorization header every call must carry
        self._runner: web.AppRunner | None = None

    async def start(self) -> SchemaRegistry:
        app = web.Application(middlewares=[self._guard])
        app.router.add_post("/subjects/{subject}/versions", self._register)
        app.router.add_post("/subjects/{subject}", self._lookup)
        app.router.add_get("/schemas/ids/{id}", self._by_id)
        app.router.add_get("/subjects", self._subjects)
        app.router.add_get("/subjects/{subject}/versions", self._versions)
        app.router.add_get("/subjects/{subject}/versions/{version}", self._version)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._tls).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def add(self, subject: str, schema: str, schema_type: str = "AVRO", references: list[Any] | None = None) -> int:
        """Register directly (as another producer would have); returns the id."""
        return self._put(subject, {"schema": schema, "schemaType": schema_type, "references": references or []})[0]

    # --- the API ---

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.auth is not None and request.headers.get("Authorization") != self.auth:
            return _error(401, 40101, "Unauthorized")
        if request.method == "GET" and request.query.get("format") == "serialized":
            self.reads[request.path] += 1
            if self.failing:
                return _error(503, 50003, "the registry is failing (the tests asked it to)")
        response: web.StreamResponse = await handler(request)
        return response

    async def _register(self, request: web.Request) -> web.Response:
        body = await request.json()
        schema_id, version = self._put(request.match_info["subject"], _normal(body))
        return _json({"id": schema_id, "version": version})

    async def _lookup(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        wanted = _normal(await request.json())
        for version, schema_id in enumerate(self.subjects.get(subject, []), 1):
            if self.schemas[schema_id - 1] == wanted:
                return _json({"subject": subject, "id": schema_id, "version": version, **_shown(wanted)})
        return _error(404, 40403, "Schema not found")

    async def _by_id(self, request: web.Request) -> web.Response:
        schema_id = int(request.match_info["id"])
        if not 1 <= schema_id <= len(self.schemas):
            return _error(404, 40403, f"Schema {schema_id} not found")
        return _json(_shown(self.schemas[schema_id - 1]))

    async def _subjects(self, request: web.Request) -> web.Response:
        return _json(sorted(self.subjects))

    async def _versions(self, request: web.Request) -> web.Response:
        ids = self.subjects.get(request.match_info["subject"])
        if ids is None:
            return _error(404, 40401, "Subject not found")
        return _json(list(range(1, len(ids) + 1)))

    async def _version(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        ids = self.subjects.get(subject)
        if ids is None:
            return _error(404, 40401, f"Subject '{subject}' not found")
        raw = request.match_info["version"]
        version = len(ids) if raw in ("latest", "-1") else int(raw)
        if not 1 <= version <= len(ids):
            return _error(404, 40402, f"Version {raw} not found")
        schema_id = ids[version - 1]
        return _json({"subject": subject, "version": version, "id": schema_id, **_shown(self.schemas[schema_id - 1])})

    def _put(self, subject: str, schema: dict[str, Any]) -> tuple[int, int]:
        if schema in self.schemas:
            schema_id = self.schemas.index(schema) + 1
        else:
            self.schemas.append(schema)
            schema_id = len(self.schemas)
        ids = self.subjects.setdefault(subject, [])
        if schema_id not in ids:
            ids.append(schema_id)
        return schema_id, ids.index(schema_id) + 1


def _normal(body: dict[str, Any]) -> dict[str, Any]:
    refs = [{"name": r["name"], "subject": r["subject"], "version": r["version"]} for r in body.get("references") or []]
    return {"schema": body["schema"], "schemaType": body.get("schemaType") or "AVRO", "references": refs}


def _shown(schema: dict[str, Any]) -> dict[str, Any]:
    shown: dict[str, Any] = {"schema": schema["schema"]}
    if schema["schemaType"] != "AVRO":
        shown["schemaType"] = schema["schemaType"]
    if schema["references"]:
        shown["references"] = schema["references"]
    return shown


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(value), content_type=_CONTENT)


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"error_code": code, "message": message}, status)
