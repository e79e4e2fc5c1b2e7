"""The event catalogue: ``[[event_types]]`` checked by check-config naming the field, each schema compiled once, and
an event's failure told from the failure's structure (never the event's values)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from daemon.core.catalogue import Catalogue, SchemaProblem, compile_schema, problem
from daemon.core.config import EventTypeConfig
from daemon.core.validate import parse_config
from tests.unit.core.test_config import doc, errors_of

LEAD = {
    "type": "object",
    "required": ["event", "lead_id"],
    "properties": {"event": {"const": "lead.created"}, "lead_id": {"type": "integer"}, "email": {"type": "string"}},
}


def entry(name: str = "lead.created", **over: Any) -> dict[str, Any]:
    return {"name": name, "description": "A lead was created", "schema": LEAD,
            "example": {"event": name, "lead_id": 7}, "validate": True, **over}  # fmt: skip


def test_a_catalogue_with_a_schema_an_example_and_validate_loads() -> None:
    config = parse_config(doc(event_types=[entry(group="Leads"), {"name": "lead.deleted"}]), {})
    first, second = config.event_types
    assert (first.name, first.group, first.validate) == ("lead.created", "Leads", True)
    assert first.example == {"event": "lead.created", "lead_id": 7}
    assert (second.schema, second.example, second.validate, second.description) == (None, None, False, "")


def test_a_schema_that_does_not_compile_is_an_error_naming_the_field_in_the_schema() -> None:
    bad = {**LEAD, "properties": {"lead_id": {"type": "integr"}}}
    lines = errors_of(doc(event_types=[entry(schema=bad, example=None)]))
    assert lines == ["event_types[0].schema.properties.lead_id.type: not a valid JSON Schema (the metaschema's "
                     "\"anyOf\" fails here)"]  # fmt: skip


def test_an_example_that_does_not_match_its_own_schema_is_an_error_naming_where() -> None:
    lines = errors_of(doc(event_types=[entry(example={"event": "lead.created", "lead_id": "seven"})]))
    assert lines == ['event_types[0].example: does not match its own schema: $.lead_id: fails "type" ("integer")']
    lines = errors_of(doc(event_types=[entry(example={"event": "lead.created"})]))
    assert lines == ['event_types[0].example: does not match its own schema: $: "lead_id" required']


def test_validate_without_a_schema_duplicates_and_patterns_are_errors() -> None:
    lines = errors_of(doc(event_types=[entry(), entry(), {"name": "lead.x", "validate": True}, {"name": "lead.*"}]))
    assert lines == [
        "event_types[3].name: has characters that are not allowed",
    ]
    lines = errors_of(doc(event_types=[entry(), entry(), {"name": "lead.x", "validate": True}]))
    assert lines == ["event_types[1].name: duplicate event type 'lead.created'",
                     "event_types[2].validate: needs a schema to validate against"]  # fmt: skip


def test_structural_faults_of_an_entry_name_their_field() -> None:
    lines = errors_of(doc(event_types=[{"name": "a", "schema": "not a table", "colour": 1, "validate": "yes"}]))
    assert sorted(lines) == ["event_types[0].colour: unknown field", "event_types[0].schema: must be a table",
                             "event_types[0].validate: expected `bool`, got `str`"]  # fmt: skip


def test_check_config_exits_2_naming_the_catalogue_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.toml"
    path.write_text("""
[kafka]
bootstrap_servers = "localhost:9092"
group_id = "g"
topics = ["events"]
results_topic = "results"

[[event_types]]
name = "lead.created"
validate = true
example = { event = "lead.created", lead_id = "seven" }
[event_types.schema]
type = "object"
required = ["lead_id"]
properties = { lead_id = { type = "integer" } }
""")
    assert tomllib.loads(path.read_text())["event_types"][0]["schema"]["required"] == ["lead_id"]
    assert main(["check-config", str(path)]) == 2
    assert 'event_types[0].example: does not match its own schema: $.lead_id: fails "type"' in capsys.readouterr().err


def test_the_catalogue_compiles_each_validating_schema_once_and_reads_no_event_for_other_types() -> None:
    catalogue = Catalogue([EventTypeConfig(name="lead.created", schema=LEAD, validate=True),
                           EventTypeConfig(name="lead.updated", schema=LEAD),  # a schema shown, not enforced
                           EventTypeConfig(name="call.ended")])  # fmt: skip
    assert [catalogue.validates(t) for t in ("lead.created", "lead.updated", "call.ended", "x")] == [
        True, False, False, False]  # fmt: skip
    reads: list[str] = []

    def decoded(value: Any) -> Any:
        def read() -> Any:
            reads.append("read")
            return value

        return read

    assert catalogue.problem("call.ended", decoded({"anything": 1})) is None
    assert catalogue.problem("lead.updated", decoded({"lead_id": "x"})) is None
    assert reads == []  # no schema to hold it to: the event is never decoded for it
    assert catalogue.problem("lead.created", decoded({"event": "lead.created", "lead_id": 1})) is None
    assert catalogue.problem("lead.created", decoded({"event": "lead.created", "lead_id": "x"})) == (
        '$.lead_id: fails "type" ("integer")')  # fmt: skip
    assert reads == ["read", "read"]


def test_a_failure_names_the_schema_never_the_events_values() -> None:
    validator = compile_schema({"type": "object", "properties": {"email": {"type": "string", "maxLength": 5}}})
    told = problem(validator, {"email": "jane.doe@secret-company.example"})
    assert told == '$.email: fails "maxLength" (5)'
    assert "jane" not in (told or "")


def test_a_reference_outside_the_schema_is_never_fetched_and_fails_the_event() -> None:
    validator = compile_schema({"$ref": "http://127.0.0.1:9/schema.json"})
    assert (
        problem(validator, {"a": 1})
        == 'the schema cannot be applied: unresolvable reference "http://127.0.0.1:9/schema.json"'
    )


def test_a_schema_that_does_not_compile_raises_naming_its_path() -> None:
    with pytest.raises(SchemaProblem) as info:
        compile_schema({"properties": {"n": {"minimum": "one"}}})
    assert info.value.path == ".properties.n.minimum"
