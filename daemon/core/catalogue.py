"""The event catalogue (``[[event_types]]``): each type's description, JSON Schema and example, and the validators of
the types whose entry says ``validate``, each compiled once per config. Pure (jsonschema only).

A schema is compiled with the validator its ``$schema`` names (draft 2020-12 when it names none) and an empty
reference registry: a ``$ref`` outside the schema is never fetched (it makes the event fail, naming the reference).
Formats are annotations, as the drafts say, not assertions.

What an event that fails is told is built from the failure's structure (where in the event, which keyword of the
schema, the keyword's value in the schema), never from the event's values: those may be personal data, and the
message goes to the results and dead-letter topics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

import orjson
from jsonschema import Draft202012Validator, exceptions, validators
from jsonschema.protocols import Validator
from referencing import Registry

from daemon.core.config import EventTypeConfig

_MAX_QUOTE: Final = 120  # characters of a schema keyword's value quoted in a message


class SchemaProblem(ValueError):
    """A schema that does not compile: ``path`` is where in the schema (``.properties.n.type``, empty at its root)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(message)


def compile_schema(schema: dict[str, Any]) -> Validator:
    """The validator of ``schema``; SchemaProblem naming where the schema itself is wrong."""
    try:
        cls = validators.validator_for(schema, default=Draft202012Validator)
    except exceptions.SchemaError as exc:  # not raised for an unknown $schema, kept for other versions of jsonschema
        raise SchemaProblem("", _failure(exc)) from None
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        raise SchemaProblem(_path(exc.path), f"not a valid JSON Schema (the metaschema's {_quote(exc.validator)} fails "
                            "here)") from None  # fmt: skip
    validator: Validator = cls(schema, registry=Registry())
    return validator


def problem(validator: Validator, document: Any) -> str | None:
    """Why ``document`` does not match the validator's schema (the most relevant failure), or None when it does."""
    try:
        if validator.is_valid(document):
            return None
        error = exceptions.best_match(validator.iter_errors(document))
    except exceptions.SchemaError as exc:  # not raised for a checked schema; kept as a failure all the same
        return f"the schema cannot be applied: {_failure(exc)}"
    except Exception as exc:  # an unresolvable $ref (referencing's errors): the event cannot be shown to match
        ref = getattr(exc, "ref", None)
        what = f"unresolvable reference {_quote(ref)}" if isinstance(ref, str) else type(exc).__name__
        return f"the schema cannot be applied: {what}"
    if error is None:
        return "does not match its schema"
    return _failure(error)


class Catalogue:
    """The catalogue's entries by name, and a validator for each that validates. Built once per config."""

    __slots__ = ("_validators", "types")

    def __init__(self, entries: Iterable[EventTypeConfig]) -> None:
        """Entries whose schema does not compile are check-config's to refuse; here they validate nothing."""
        self.types: dict[str, EventTypeConfig] = {}
        self._validators: dict[str, Validator] = {}
        for entry in entries:
            self.types.setdefault(entry.name, entry)
            if entry.validate and entry.schema is not None and entry.name not in self._validators:
                try:
                    self._validators[entry.name] = compile_schema(entry.schema)
                except SchemaProblem:
                    continue

    def validates(self, event_type: str) -> bool:
        return event_type in self._validators

    def problem(self, event_type: str, decoded: Callable[[], Any]) -> str | None:
        """Why an event of ``event_type`` may not be delivered (its schema's failure), or None. ``decoded`` is called
        only for a type that validates: a type without a schema costs one dict lookup."""
        validator = self._validators.get(event_type)
        if validator is None:
            return None
        return problem(validator, decoded())


def check_entries(entries: list[EventTypeConfig], fault: Callable[[str, str], None]) -> None:
    """check-config's checks of ``[[event_types]]``: a name once, a schema that compiles, ``validate`` only with a
    schema, an example that is an event of its type and matches its own schema. ``fault(path, message)``."""
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        path = f"event_types[{i}]"
        if entry.name in seen:
            fault(f"{path}.name", f"duplicate event type {entry.name!r}")
        seen.add(entry.name)
        if entry.validate and entry.schema is None:
            fault(f"{path}.validate", "needs a schema to validate against")
        validator = None
        if entry.schema is not None:
            try:
                validator = compile_schema(entry.schema)
            except SchemaProblem as exc:
                fault(f"{path}.schema{exc.path}", str(exc))
        if entry.example is not None and validator is not None:
            failure = problem(validator, entry.example)
            if failure is not None:
                fault(f"{path}.example", f"does not match its own schema: {failure}")


def _failure(error: exceptions.ValidationError | exceptions.SchemaError) -> str:
    """``where: what`` of a failure, from its structure: the event's path and the schema's keyword and value."""
    where = error.json_path if hasattr(error, "json_path") else "$"
    keyword, value = error.validator, error.validator_value
    if keyword == "required" and isinstance(value, list) and isinstance(error.instance, dict):
        missing = [name for name in value if isinstance(name, str) and name not in error.instance]
        if missing:
            return f"{where}: {', '.join(_quote(n) for n in missing)} required"
    return f"{where}: fails {_quote(str(keyword))} ({_quote(value)})"


def _quote(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= _MAX_QUOTE else text[: _MAX_QUOTE - 3] + "..."


def _path(parts: Iterable[Any]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)
