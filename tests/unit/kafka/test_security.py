"""Kafka client security: every setting reaches each client the router builds (the consumers, the producer, the
admin client), the OAUTHBEARER token file is read again on each login, mTLS presents the client certificate in a
real TLS handshake, and check-config refuses every incomplete combination with the field path."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.core.config import Config
from daemon.core.validate import parse_config
from daemon.engine.health import Health, HealthReader
from daemon.kafka.clients import FileTokenProvider, RouterProducer, admin_client, kafka_client_options, reader
from daemon.kafka.consume import Source
from daemon.observe.metrics import Metrics
from tests.kafka.security import Authority, cert_pem, key_pem
from tests.unit.core.test_config import doc, errors_of, kafka
from tests.unit.standins import Writer

DATA = Path(__file__).resolve().parents[2] / "data"
CERT, KEY, ENCRYPTED_KEY = DATA / "tls-cert.pem", DATA / "tls-key.pem", DATA / "tls-key-encrypted.pem"
KEY_PASSWORD = "test-key-password"  # of tls-key-encrypted.pem


def config_of(environ: dict[str, str], **settings: Any) -> Config:
    return parse_config(doc(kafka=kafka(**settings)), environ)


@contextlib.asynccontextmanager
async def every_client(config: Config, environ: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
    """The aiokafka client inside each Kafka client the router builds from ``config`` (none of them started)."""
    options = kafka_client_options(config.kafka, environ)
    noop: Any = lambda record, part: None  # noqa: E731
    health = Health(Writer(), "health", Metrics())  # type: ignore[arg-type]
    consumers = {
        "events consumer": Source(config.kafka, environ, Metrics(), noop, 1.0)._consumer,
        "health reader": HealthReader("health", options, health)._follower.consumer,
        "read-back consumer": reader(options),
        "tail consumer": reader(options, auto_offset_reset="latest"),
    }
    producer = RouterProducer(config.kafka, environ)
    admin = admin_client(options)
    try:
        yield {
            **{name: consumer._client for name, consumer in consumers.items()},
            "producer": producer.client,
            "admin client": admin._client,
        }
    finally:
        for consumer in consumers.values():
            await consumer.stop()
        await producer.stop()
        await admin.close()


SCRAM = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "router",
         "sasl_password_env": "KAFKA_PASSWORD", "ssl_cafile": str(CERT)}  # fmt: skip


async def test_sasl_scram_over_tls_reaches_every_client() -> None:
    environ = {"KAFKA_PASSWORD": "pw-123"}
    async with every_client(config_of(environ, **SCRAM), environ) as built:
        assert len(built) == 6
    for name, client in built.items():
        assert client._security_protocol == "SASL_SSL", name
        assert client._sasl_mechanism == "SCRAM-SHA-512", name
        assert (client._sasl_plain_username, client._sasl_plain_password) == ("router", "pw-123"), name
        context = client._ssl_context
        assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED, name
        assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "127.0.0.1"),),)], name


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
async def test_sasl_plaintext_mechanisms_reach_every_client(mechanism: str) -> None:
    environ = {"KAFKA_PASSWORD": "pw"}
    settings = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism, "sasl_username": "u",
                "sasl_password_env": "KAFKA_PASSWORD"}  # fmt: skip
    async with every_client(config_of(environ, **settings), environ) as built:
        pass
    for name, client in built.items():
        assert (client._security_protocol, client._sasl_mechanism) == ("SASL_PLAINTEXT", mechanism), name
        assert (client._sasl_plain_username, client._sasl_plain_password) == ("u", "pw"), name
        assert client._ssl_context is None, name


async def test_oauthbearer_reaches_every_client_and_reads_the_token_file_on_each_login(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    settings = {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER",
                "sasl_oauth_token_file": str(token_file)}  # fmt: skip
    async with every_client(config_of({}, **settings), {}) as built:
        pass
    for name, client in built.items():
        assert client._sasl_mechanism == "OAUTHBEARER", name
        assert isinstance(client._sasl_oauth_token_provider, FileTokenProvider), name
        assert client._sasl_plain_password is None, name
    provider = built["producer"]._sasl_oauth_token_provider
    assert await provider.token() == "first-token"
    token_file.write_text("refreshed-by-a-sidecar")
    assert await provider.token() == "refreshed-by-a-sidecar"
    assert "token" not in repr(provider).replace(str(token_file), "")
    token_file.write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        await provider.token()


async def test_mtls_presents_the_client_certificate_in_a_real_handshake() -> None:
    """A TLS server that requires a client certificate signed by the test CA accepts the clients' context."""
    environ = {"KEY_PASSWORD": KEY_PASSWORD}
    config = config_of(environ, security_protocol="SSL", ssl_cafile=str(CERT), ssl_certfile=str(CERT),
                       ssl_keyfile=str(ENCRYPTED_KEY), ssl_key_password_env="KEY_PASSWORD")  # fmt: skip
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(CERT, KEY)
    server_context.load_verify_locations(cafile=CERT)
    server_context.verify_mode = ssl.CERT_REQUIRED
    peers: list[Any] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peercert"))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]

    async def handshake(context: ssl.SSLContext) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        except (ssl.SSLError, ConnectionResetError):
            return
        with contextlib.suppress(ssl.SSLError, ConnectionResetError):
            await reader.read()  # the server closes at once (or refuses: TLS 1.3 says so after the handshake)
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionResetError):
            await writer.wait_closed()

    try:
        async with every_client(config, environ) as built:
            pass
        for name, client in built.items():
            before = len(peers)
            await handshake(client._ssl_context)
            assert len(peers) == before + 1, name
            assert peers[-1]["subject"] == ((("commonName", "127.0.0.1"),),), name
            assert client._security_protocol == "SSL", name
        # Without the client certificate, the same server refuses the handshake.
        bare = kafka_client_options(config_of({}, security_protocol="SSL", ssl_cafile=str(CERT)).kafka, {})
        before = len(peers)
        await handshake(bare["ssl_context"])
        assert len(peers) == before
    finally:
        server.close()
        await server.wait_closed()


def test_plaintext_gets_no_tls_and_no_sasl() -> None:
    options = kafka_client_options(config_of({}).kafka, {})
    assert options == {"bootstrap_servers": "localhost:9092", "client_id": "webhook-router",
                       "security_protocol": "PLAINTEXT"}  # fmt: skip


# --- check-config: every incomplete combination, with the field path ---

MISSING = "/nonexistent/kafka-ca.pem"
NOT_PASSWORD_BASED = "only for sasl_mechanism PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"security_protocol": "SASL_SSL"}, ["kafka.sasl_mechanism: required with security_protocol SASL_SSL"]),
        ({"security_protocol": "SASL_PLAINTEXT"},
         ["kafka.sasl_mechanism: required with security_protocol SASL_PLAINTEXT"]),
        ({"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password_env": "PW"},
         ["kafka.sasl_mechanism: needs security_protocol SASL_SSL or SASL_PLAINTEXT (not PLAINTEXT)"]),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256"},
         ["kafka.sasl_username: required with sasl_mechanism SCRAM-SHA-256",
          "kafka.sasl_password_env: required with sasl_mechanism SCRAM-SHA-256"]),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_password_env": "PW"},
         ["kafka.sasl_username: required with sasl_mechanism PLAIN"]),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u"},
         ["kafka.sasl_password_env: required with sasl_mechanism SCRAM-SHA-512"]),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u",
          "sasl_password_env": "UNSET"}, ["kafka.sasl_password_env: environment variable UNSET is not set"]),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"},
         ["kafka.sasl_oauth_token_file: required with sasl_mechanism OAUTHBEARER"]),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "sasl_oauth_token_file": MISSING},
         [f"kafka.sasl_oauth_token_file: cannot read {MISSING}: No such file or directory"]),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "sasl_oauth_token_file": str(CERT),
          "sasl_username": "u"}, [f"kafka.sasl_username: {NOT_PASSWORD_BASED}"]),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password_env": "PW",
          "sasl_oauth_token_file": str(CERT)}, ["kafka.sasl_oauth_token_file: only for sasl_mechanism OAUTHBEARER"]),
        ({"sasl_username": "u"}, [f"kafka.sasl_username: {NOT_PASSWORD_BASED}"]),
        ({"security_protocol": "SSL", "ssl_cafile": MISSING},
         [f"kafka.ssl_cafile: cannot read {MISSING}: No such file or directory"]),
        ({"ssl_cafile": str(CERT)}, ["kafka.ssl_cafile: only with security_protocol SSL or SASL_SSL (not PLAINTEXT)"]),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u",
          "sasl_password_env": "PW", "ssl_certfile": str(CERT), "ssl_keyfile": str(KEY)},
         ["kafka.ssl_certfile: only with security_protocol SSL or SASL_SSL (not SASL_PLAINTEXT)",
          "kafka.ssl_keyfile: only with security_protocol SSL or SASL_SSL (not SASL_PLAINTEXT)"]),
        ({"security_protocol": "SSL", "ssl_keyfile": str(KEY)},
         ["kafka.ssl_keyfile: needs ssl_certfile (the client certificate it belongs to)"]),
        ({"security_protocol": "SSL", "ssl_certfile": str(CERT), "ssl_keyfile": MISSING},
         [f"kafka.ssl_keyfile: cannot read {MISSING}: No such file or directory"]),
        ({"security_protocol": "SSL", "ssl_certfile": str(CERT), "ssl_keyfile": str(ENCRYPTED_KEY),
          "ssl_key_password_env": "UNSET"}, ["kafka.ssl_key_password_env: environment variable UNSET is not set"]),
        ({"security_protocol": "SSL", "ssl_key_password_env": "PW"},
         ["kafka.ssl_key_password_env: needs ssl_certfile and its key"]),
        ({"security_protocol": "SSL", "ssl_cafile": str(DATA.parent / "__init__.py")},
         ["kafka.ssl_cafile: not a PEM file of CA certificates ([X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate "
          "or crl found)"]),
        ({"security_protocol": "SSL", "ssl_certfile": str(CERT), "ssl_keyfile": str(ENCRYPTED_KEY)},
         ["kafka.ssl_keyfile: the client certificate and its key do not load ([SSL] PEM lib; an encrypted key needs "
          "kafka.ssl_key_password_env)"]),
        ({"security_protocol": "SSL", "ssl_certfile": str(CERT), "ssl_keyfile": str(ENCRYPTED_KEY),
          "ssl_key_password_env": "WRONG"}, ["kafka.ssl_keyfile: the client certificate and its key do not load "
                                             "([SSL] PEM lib)"]),
        ({"security_protocol": "SSL", "ssl_certfile": str(KEY)},
         ["kafka.ssl_certfile: the client certificate and its key do not load ([SSL] PEM lib; an encrypted key needs "
          "kafka.ssl_key_password_env)"]),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "", "sasl_password_env": "PW"},
         ["kafka.sasl_username: length must be >= 1"]),
    ],
)  # fmt: skip
def test_check_config_refuses_incomplete_security(settings: dict[str, Any], expected: list[str]) -> None:
    assert errors_of(doc(kafka=kafka(**settings)), {"PW": "pw", "WRONG": "not-the-password"}) == expected


@pytest.mark.parametrize(
    "settings",
    [
        {"security_protocol": "SSL"},  # the system's trust store
        {"security_protocol": "SSL", "ssl_cafile": str(CERT), "ssl_certfile": str(CERT), "ssl_keyfile": str(KEY)},
        {"security_protocol": "SSL", "ssl_certfile": str(CERT), "ssl_keyfile": str(ENCRYPTED_KEY),
         "ssl_key_password_env": "KEY_PASSWORD"},
        {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u",
         "sasl_password_env": "PW", "ssl_cafile": str(CERT)},
        {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "sasl_oauth_token_file": str(CERT)},
        {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u",
         "sasl_password_env": "PW"},
    ],
)  # fmt: skip
def test_complete_combinations_pass(settings: dict[str, Any]) -> None:
    config = parse_config(doc(kafka=kafka(**settings)), {"PW": "pw", "KEY_PASSWORD": KEY_PASSWORD})
    assert config.kafka.security_protocol == settings["security_protocol"]


@pytest.mark.parametrize(("name", "days", "expected"), [
    ("expired", (-10, -1), "the client certificate expired at {after}: the server refuses it; renew it"),
    ("early", (1, 30), "the client certificate is valid only from {before} (is this machine's clock right?)"),
])  # fmt: skip
def test_check_config_refuses_a_client_certificate_out_of_its_validity(
    tmp_path: Path, name: str, days: tuple[float, float], expected: str
) -> None:
    """The broker refuses an expired certificate with a TLS alert that names nothing ('certificate unknown'):
    check-config (and run, and the operator commands) names the setting first."""
    key, cert = Authority("test-ca").issue("router", valid_days=days)
    (tmp_path / "c.pem").write_bytes(cert_pem(cert))
    (tmp_path / "k.pem").write_bytes(key_pem(key))
    at = {
        "after": f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
        "before": f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}",
    }
    settings = {
        "security_protocol": "SSL",
        "ssl_certfile": str(tmp_path / "c.pem"),
        "ssl_keyfile": str(tmp_path / "k.pem"),
    }
    assert errors_of(doc(kafka=kafka(**settings)), {}) == [f"kafka.ssl_certfile: {expected.format(**at)}"]
