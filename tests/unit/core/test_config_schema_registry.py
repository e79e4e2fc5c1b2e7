"""[schema_registry] and the per-topic value formats and headers: check-config's faults, each naming its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w

from daemon.cli import main
from daemon.core import validate
from daemon.core.reload import at_restart, refused
from daemon.core.validate import parse_config
from tests.unit.core.test_config import doc, errors_of, kafka

DATA = Path(__file__).resolve().parents[2] / "data"
CERT, KEY = DATA / "tls-cert.pem", DATA / "tls-key.pem"
FRAMED = {"value_formats": {"leads": "schema-registry"}}


def registry(**settings: Any) -> dict[str, Any]:
    return doc(kafka=kafka(**FRAMED), schema_registry={"url": "https://registry.internal:8081", **settings})


def test_a_full_schema_registry_config_loads() -> None:
    raw = registry(ca_file=str(CERT), cert_file=str(CERT), key_file=str(KEY), username="router",
                   password_env="SR_PASSWORD", event_types={"com.acme.LeadCreated": "lead.created"},
                   protobuf_json_names=True, protobuf_include_defaults=False, timeout_s=3, cache_size=500)  # fmt: skip
    raw["kafka"] = kafka(value_formats={"leads": "schema-registry", "orders": "auto"},
                         event_type_headers={"orders": "event-type"},
                         event_id_headers={"orders": "event-id"})  # fmt: skip
    config = parse_config(raw, {"SR_PASSWORD": "pw"})
    assert config.schema_registry.event_types == {"com.acme.LeadCreated": "lead.created"}
    assert config.kafka.value_formats == {"leads": "schema-registry", "orders": "auto"}
    assert "pw" not in repr(config.schema_registry) and "registry.internal" not in repr(config.schema_registry)


def test_json_topics_need_no_registry() -> None:
    parse_config(doc(kafka=kafka(value_formats={"leads": "json"})), {})


@pytest.mark.parametrize(
    ("kafka_settings", "registry_settings", "environ", "expected"),
    [
        (FRAMED, None, {}, ["schema_registry.url: required: kafka.value_formats.leads reads values in the Schema "
                            "Registry wire format"]),
        ({"value_formats": {"leads": "avro"}}, None, {},
         ["kafka.value_formats.leads: must be one of 'auto', 'json', 'schema-registry'"]),
        ({"value_formats": {"ghost": "auto"}, "event_type_headers": {"ghost": "t"}, "event_id_headers": {"x": "i"}},
         {"url": "http://sr:8081"}, {},
         ["kafka.event_type_headers.ghost: not one of kafka.topics",
          "kafka.event_id_headers.x: not one of kafka.topics", "kafka.value_formats.ghost: not one of kafka.topics"]),
        (FRAMED, {"url": "registry:8081"}, {},
         ["schema_registry.url: must be an absolute http:// or https:// URL of the registry"]),
        (FRAMED, {"url": "https://user:pw@sr:8081"}, {},
         ["schema_registry.url: must not carry credentials: use username and password_env"]),
        (FRAMED, {"url": "https://sr:8081/?x=1"}, {},
         ["schema_registry.url: must be the registry's base URL, without a query or fragment"]),
        (FRAMED, {"url": "http://sr:8081", "ca_file": str(CERT)}, {},
         ["schema_registry.ca_file: only with an https:// url"]),
        (FRAMED, {"url": "https://sr:8081", "key_file": str(KEY)}, {},
         ["schema_registry.key_file: needs cert_file (the client certificate it belongs to)"]),
        (FRAMED, {"url": "https://sr:8081", "ca_file": "/nowhere/ca.pem"}, {},
         ["schema_registry.ca_file: cannot read /nowhere/ca.pem: No such file or directory"]),
        (FRAMED, {"url": "https://sr:8081", "ca_file": str(KEY)}, {},
         ["schema_registry.ca_file: not a PEM file of CA certificates ([X509: NO_CERTIFICATE_OR_CRL_FOUND] no "
          "certificate or crl found)"]),
        (FRAMED, {"url": "https://sr:8081", "cert_file": str(KEY)}, {},
         ["schema_registry.cert_file: the client certificate and its key do not load ([SSL] PEM lib)"]),
        (FRAMED, {"url": "https://sr:8081", "username": "router"}, {},
         ["schema_registry.password_env: required with username (the variable holding the password)"]),
        (FRAMED, {"url": "https://sr:8081", "password_env": "PW"}, {"PW": "x"},
         ["schema_registry.username: required with password_env"]),
        (FRAMED, {"url": "https://sr:8081", "username": "router", "password_env": "PW"}, {},
         ["schema_registry.password_env: environment variable PW is not set"]),
        (FRAMED, {"url": "https://sr:8081", "token_env": "T", "token_file": str(CERT)}, {"T": "t"},
         ["schema_registry: at most one of token_env, token_file"]),
        (FRAMED, {"url": "https://sr:8081", "username": "u", "password_env": "PW", "token_env": "T"},
         {"PW": "p", "T": "t"}, ["schema_registry.token_env: basic auth (username) or a bearer token, not both"]),
        (FRAMED, {"url": "https://sr:8081", "token_file": "/nowhere/token"}, {},
         ["schema_registry.token_file: cannot read /nowhere/token: No such file or directory"]),
        (FRAMED, {"url": "https://sr:8081", "event_types": {"com.acme.Lead": "lead\ncreated"}}, {},
         ["schema_registry.event_types.com.acme.Lead: has characters that are not allowed"]),
        (FRAMED, {"url": "https://sr:8081", "cache_size": 10}, {}, ["schema_registry.cache_size: must be >= 100"]),
    ],
)  # fmt: skip
def test_every_incomplete_or_wrong_registry_setting_is_a_fault_naming_its_field(
    kafka_settings: dict[str, Any], registry_settings: dict[str, Any] | None, environ: dict[str, str],
    expected: list[str],
) -> None:  # fmt: skip
    raw = doc(kafka=kafka(**kafka_settings))
    if registry_settings is not None:
        raw["schema_registry"] = registry_settings
    assert errors_of(raw, environ) == expected


def test_a_missing_extra_is_named_with_the_command_that_installs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate, "_schema_registry_missing", lambda: "fastavro")
    assert errors_of(registry()) == [
        "kafka.value_formats.leads: needs the schema-registry extra (fastavro is not installed): pip install "
        "'kafka-webhook-router[schema-registry]'"
    ]


def test_check_config_names_the_registry_faults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.toml"
    path.write_text(tomli_w.dumps(registry(username="router", password_env="SR_PASSWORD")))
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "schema_registry.password_env: environment variable SR_PASSWORD is not set"
    ]


def test_a_reload_takes_the_event_type_names_at_once_and_the_client_settings_at_a_restart() -> None:
    old = parse_config(registry(), {})
    renamed = parse_config(registry(event_types={"com.acme.Lead": "lead.created"}), {})
    assert at_restart(old, renamed) == []
    moved = parse_config(registry(url="https://elsewhere:8081", timeout_s=2), {})
    assert at_restart(old, moved) == ["schema_registry.url", "schema_registry.timeout_s"]


def test_a_reload_that_reads_the_wire_format_without_a_registry_client_running_is_refused() -> None:
    running = parse_config(doc(), {})
    assert refused(running, parse_config(registry(), {})) == [
        "kafka.value_formats.leads: the running daemon started without schema_registry.url, so it has no registry "
        "client to fetch schemas with: restart to take it"
    ]
    assert refused(parse_config(registry(), {}), parse_config(registry(event_types={"a.B": "b"}), {})) == []
