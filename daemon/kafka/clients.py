"""What every Kafka client of the router shares: the connection and its security, the OAUTHBEARER token file, and
closing a consumer whatever state the cluster is in.

The consumers (events, retry tiers, health, read-backs), the producer and the admin client are all built from
``kafka_client_options``, so a security setting reaches each of them or none.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient

from daemon.core.config import KafkaConfig

log = logging.getLogger(__name__)


def kafka_client_options(kafka: KafkaConfig, environ: Any) -> dict[str, Any]:
    """Connection settings shared by every Kafka client the router makes: the consumers, the producer and the admin
    client (all of them take exactly these keyword arguments). ``daemon.core.validate`` has made sure the combination
    is complete (files exist, variables are set)."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
    }
    mechanism = kafka.sasl_mechanism
    if mechanism == "OAUTHBEARER":
        options["sasl_mechanism"] = mechanism
        options["sasl_oauth_token_provider"] = FileTokenProvider(str(kafka.sasl_oauth_token_file))
    elif mechanism:
        options["sasl_mechanism"] = mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        if kafka.sasl_password_env:
            options["sasl_plain_password"] = environ[kafka.sasl_password_env]
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        # Without a password, an encrypted key fails to load rather than have OpenSSL prompt on a terminal.
        password = environ[kafka.ssl_key_password_env] if kafka.ssl_key_password_env else _no_password
        options["ssl_context"] = create_ssl_context(
            cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile, password=password
        )
    return options


def _no_password() -> str:
    return ""


def make_producer(kafka: KafkaConfig, environ: Any, **settings: Any) -> AIOKafkaProducer:
    """The producer of results (and retries, dead letters, health), as ``kafka`` asks for it."""
    return AIOKafkaProducer(
        acks="all" if kafka.results_acks == "all" else 1,
        enable_idempotence=kafka.enable_idempotence,
        **settings,
        **kafka_client_options(kafka, environ),
    )


def admin_client(client_options: Mapping[str, Any]) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_options)


class FileTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """SASL/OAUTHBEARER: the token is read from a file on every login, so a sidecar that refreshes the file
    refreshes the router's credentials without a restart."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def token(self) -> str:
        text = await asyncio.to_thread(Path(self.path).read_text, encoding="utf-8")
        token = text.strip()
        if not token:
            raise ValueError(f"kafka.sasl_oauth_token_file {self.path} is empty")
        return token

    def __repr__(self) -> str:  # the token itself is never shown
        return f"FileTokenProvider({self.path!r})"


async def close_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.stop()``, also when the cluster is gone.

    aiokafka 0.14's ``Fetcher.close()`` cancels its fetch tasks and awaits each one; a task cancelled while it
    waits out a failed fetch (a broker down) re-raises that cancellation out of ``stop()``, which then never closes
    the client's connections. That cancellation is not ours: finish the close it abandoned.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.debug("consumer stop interrupted by a cancelled fetch: finishing it")
        fetcher = consumer._fetcher
        pending = list(getattr(fetcher, "_pending_tasks", ()))
        for fetch in pending:
            fetch.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await consumer._client.close()
