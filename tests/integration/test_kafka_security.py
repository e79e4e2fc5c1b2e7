"""Security against the broker: one Kafka node of this module's own with an mTLS listener (client certificates
required), a SASL_SSL one (PLAIN, SCRAM-SHA-512, OAUTHBEARER with Kafka's unsecured JWT validator) and ACLs
(StandardAuthorizer), as ``tests.kafka.security`` sets them up. In each mode the daemon, ``ping``, ``tail`` and
``stats`` connect; a wrong password, a refused token or certificate is an error naming the setting (the daemon keeps
trying, not ready, /readyz saying why; a command exits 2), an expired certificate is refused by the config's check
(exit 2); a principal allowed only the router's topics and group works, and a topic it may not read (or not even
describe) stops the start (exit 2) naming the topic and what to grant.

Kafka only: Tansu has neither client certificates, SCRAM, OAUTHBEARER nor ACLs. One node for all of it (its start
is 2-4 s with the class-data archive); each case starts the daemon or a command against it."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError
from aiokafka.helpers import create_ssl_context

from tests.helpers import SECRET, DaemonProcess, Receiver, env_with, eventually, produce, unique
from tests.integration.conftest import KafkaBroker, Setup, kafka_of_its_own
from tests.kafka.security import USERS, Security, token

PASSWORD_ENV = "WR_KAFKA_PASSWORD"


@pytest.fixture(scope="module")
async def kafka(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KafkaBroker]:
    work = tmp_path_factory.mktemp("kafka-security")
    needs = "needs TLS client certificates, SCRAM, OAUTHBEARER and ACLs"
    async with kafka_of_its_own(work, needs, security=Security(work / "tls")) as b:
        yield b


def settings(
    kafka: KafkaBroker, mode: str, tmp_path: Path, user: str = "router", client: str = "router"
) -> dict[str, Any]:
    """The [kafka] settings of ``mode`` for ``user`` (SASL) or the certificate ``client`` (mTLS)."""
    security = kafka.cluster.security
    assert security is not None
    ca = str(security.ca)
    if mode == "mtls":
        cert = security.client(client)
        listener = {"security_protocol": "SSL", "ssl_certfile": str(cert.cert), "ssl_keyfile": str(cert.key)}
        return {"bootstrap_servers": kafka.cluster.bootstrap_of("SSL"), "ssl_cafile": ca, **listener}
    sasl = {
        "bootstrap_servers": kafka.cluster.bootstrap_of("SASL_SSL"),
        "security_protocol": "SASL_SSL",
        "ssl_cafile": ca,
    }
    if mode == "oauth":
        path = tmp_path / "token"
        path.write_text(token(user))
        return {**sasl, "sasl_mechanism": "OAUTHBEARER", "sasl_oauth_token_file": str(path)}
    mechanism = {"scram": "SCRAM-SHA-512", "plain": "PLAIN"}[mode]
    return {**sasl, "sasl_mechanism": mechanism, "sasl_username": user, "sasl_password_env": PASSWORD_ENV}


class Case:
    """One test's topics (made through the PLAINTEXT listener), receiver, config and processes."""

    def __init__(self, kafka: KafkaBroker, tmp_path: Path, prefix: str = "") -> None:
        self.kafka = kafka
        self.setup = Setup(kafka, unique(f"{prefix}events"), unique(f"{prefix}results"), unique(f"{prefix}group"),
                           tmp_path / "router.toml", prefix=unique(f"{prefix}wr"))  # fmt: skip
        self.tmp_path = tmp_path
        self.receiver = Receiver()
        self.daemon: DaemonProcess | None = None
        self.env = env_with(**{PASSWORD_ENV: USERS["router"]})

    async def write(self, kafka_settings: dict[str, Any], topics: list[str] | None = None) -> Path:
        await self.kafka.create_topics([self.setup.topic, self.setup.results])
        await self.receiver.start()
        doc = self.setup.config([{"id": "crm", "url": self.receiver.url, "secret": SECRET}],
                                [{"endpoint": "crm", "events": ["*"]}], **kafka_settings)  # fmt: skip
        if topics is not None:
            doc["kafka"]["topics"] = topics
        return self.setup.write(doc)

    async def start(self, wait_ready: bool = True) -> DaemonProcess:
        self.daemon = DaemonProcess(self.setup.path, self.setup.admin_port, self.tmp_path / "daemon.log", self.env)
        return await self.daemon.start(wait_ready)

    async def command(self, *args: str, within_s: float = 60) -> tuple[int, str, str]:
        """``webhook-router ARGS --config`` this case's config: exit code, stdout, stderr."""
        return await self.finish(await self.begin(*args), within_s)

    async def begin(self, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", *args, "--config", str(self.setup.path), env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip

    async def finish(self, proc: asyncio.subprocess.Process, within_s: float = 60) -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(proc.communicate(), within_s)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def stop(self) -> None:
        if self.daemon is not None:
            await self.daemon.kill()
        await self.receiver.stop()


@pytest.fixture
async def case(kafka: KafkaBroker, tmp_path: Path) -> AsyncIterator[Case]:
    c = Case(kafka, tmp_path)
    yield c
    await c.stop()


def event(n: int) -> bytes:
    return json.dumps({"event": "lead.created", "n": n}).encode()


@pytest.mark.parametrize("mode", ["mtls", "scram", "plain", "oauth"])
async def test_the_daemon_ping_tail_and_stats_connect(
    case: Case, kafka: KafkaBroker, tmp_path: Path, mode: str
) -> None:
    await case.write(settings(kafka, mode, tmp_path))
    await case.start()
    tail = await case.begin("tail", "--json", "--count", "1")
    assert tail.stderr is not None
    following = await asyncio.wait_for(tail.stderr.readline(), 60)  # from the end: connected before the event
    assert following.startswith(b"following "), following
    await produce(kafka.bootstrap, case.setup.topic, [event(1)])
    await case.receiver.wait_for(1)
    code, out, err = await case.finish(tail)
    assert code == 0, err
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert (record["endpoint_id"], record["status"], record["source_offset"]) == ("crm", "delivered", 0)

    code, out, err = await case.command("ping", "crm")
    assert (code, out.split()[:2]) == (0, ["delivered", "200"]), err
    code, out, err = await case.command("stats", "--window", "10m", "--json")
    assert code == 0, err
    (row,) = json.loads(out)["endpoints"]
    assert (row["endpoint"], row["delivered"]) == ("crm", 2)  # the event and the ping, both read back over `mode`


REFUSED = {
    "scram": ("kafka.sasl_username 'router', kafka.sasl_password_env WR_KAFKA_PASSWORD: the cluster refused the "
              "SCRAM-SHA-512 credentials (Authentication failed during authentication due to invalid credentials"),
    "plain": ("kafka.sasl_username 'router', kafka.sasl_password_env WR_KAFKA_PASSWORD: the cluster refused the PLAIN "
              "credentials (Authentication failed: Invalid username or password)"),
    "oauth": "kafka.sasl_oauth_token_file ({token}): the cluster refused the token ({{\"status\":\"invalid_token\"",
    "mtls": ("kafka.ssl_certfile ({cert}): the cluster refused the client certificate (its TLS alert: certificate "
             "unknown): is it signed by a CA the cluster trusts, and valid now?"),
}  # fmt: skip


@pytest.mark.parametrize("mode", list(REFUSED))
async def test_refused_credentials_are_an_error_naming_the_setting_never_a_crash_loop(
    case: Case, kafka: KafkaBroker, tmp_path: Path, mode: str
) -> None:
    """A wrong password (PLAIN, SCRAM), an expired token (OAUTHBEARER), a certificate of a CA the cluster does not
    trust (mTLS). The daemon keeps trying (the cluster's side may be fixed: a user added, a token refreshed), not
    ready and saying why; the commands exit 2 saying it."""
    found = settings(kafka, mode, tmp_path, client="untrusted")
    if mode == "oauth":
        Path(found["sasl_oauth_token_file"]).write_text(token("router", lifetime_s=-600))
    case.env[PASSWORD_ENV] = "not-the-password"
    await case.write(found)
    expected = REFUSED[mode].format(token=found.get("sasl_oauth_token_file"), cert=found.get("ssl_certfile"))
    d = await case.start(wait_ready=False)

    async def says_why() -> bool:
        status, body = await d.get_json("/readyz")
        return status == 503 and expected in json.dumps(body, ensure_ascii=False).replace('\\"', '"')

    await eventually(says_why, 30)
    commands = (["ping", "crm"], ["tail", "--for", "5"], ["stats", "--window", "10m"])
    for command, (code, _, err) in zip(
        commands, await asyncio.gather(*(case.command(*c) for c in commands)), strict=True
    ):
        assert code == 2 and expected in err, (command, code, err)
    assert d.alive() and d.log().count(expected) == 1  # tried again since, said once a minute


async def test_an_expired_client_certificate_is_refused_before_the_broker_is_asked(
    case: Case, kafka: KafkaBroker, tmp_path: Path
) -> None:
    path = await case.write(settings(kafka, "mtls", tmp_path, client="expired"))
    expected = "kafka.ssl_certfile: the client certificate expired at "
    commands = (["run"], ["ping", "crm"], ["tail", "--for", "5"], ["stats"])
    for command, (code, out, err) in zip(
        commands, await asyncio.gather(*(case.command(*c) for c in commands)), strict=True
    ):
        assert code == 2 and expected in out + err, (command, code, out, err)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "daemon", "check-config", str(path),
                                                stderr=asyncio.subprocess.PIPE)  # fmt: skip
    _, checked = await proc.communicate()
    assert proc.returncode == 2 and expected in checked.decode()


async def test_a_principal_allowed_only_the_routers_topics_and_group_works_and_a_topic_it_may_not_read_stops_the_start(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    prefix = unique("lim") + "-"
    for operations, resource in ((["Read", "Write", "Describe", "Create", "DescribeConfigs"], {"topic": prefix}),
                                 (["Read"], {"group": prefix})):  # fmt: skip
        await kafka.cluster.grant("User:limited", operations, prefixed=True, **resource)
    allowed = Case(kafka, tmp_path / "allowed", prefix)
    (tmp_path / "allowed").mkdir()
    forbidden, described = unique("secret-events"), unique("described-events")
    await kafka.create_topics([forbidden, described])
    await kafka.cluster.grant("User:limited", ["Describe"], topic=described)
    try:
        allowed.env[PASSWORD_ENV] = USERS["limited"]
        await allowed.write(settings(kafka, "scram", tmp_path, user="limited"))
        await allowed.start()
        await produce(kafka.bootstrap, allowed.setup.topic, [event(1)])
        await allowed.receiver.wait_for(1)
        code, out, err = await allowed.command("ping", "crm")
        assert code == 0, err
        code, out, err = await allowed.command("stats", "--window", "10m", "--json")
        assert (code, json.loads(out)["endpoints"][0]["delivered"]) == (0, 2), err
        await allowed.stop()

        topics = [allowed.setup.topic, forbidden, described]
        await allowed.write(settings(kafka, "scram", tmp_path, user="limited"), topics)
        code, out, err = await allowed.command("run", within_s=60)
        assert code == 2, out + err
        lines = [line.split(":   ", 1)[-1] for line in err.splitlines() if " ERROR daemon:   " in line]
        assert lines == [
            f"topic {forbidden} (kafka.topics): this principal may not use it (TOPIC_AUTHORIZATION_FAILED): grant it "
            "Read and Describe (see docs/kafka.md, 'Who may write the router's topics')",
            f"topic {described} (kafka.topics): this principal may describe it but not read it "
            "(TOPIC_AUTHORIZATION_FAILED): grant it Read",
        ]  # nothing else: the router's own topics and groups are allowed
    finally:
        await allowed.stop()


async def test_with_the_documented_acls_a_platform_producer_writes_events_but_never_the_routers_own_topics(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    """docs/kafka.md, 'Who may write the router's topics': the platform's producers get Write on the events topics
    only. Such a principal (``User:limited`` here) writes events, and is refused on the endpoints and health topics
    (where a record says where deliveries go and which endpoints are paused) that only the router writes."""
    security = kafka.cluster.security
    assert security is not None
    prefix, events = unique("acl-wr"), unique("acl-events")
    own = [f"{prefix}.endpoints", f"{prefix}.health"]
    await kafka.create_topics([events, *own])
    await kafka.cluster.grant("User:limited", ["Write", "Describe"], topic=events)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.cluster.bootstrap_of("SASL_SSL"), security_protocol="SASL_SSL",
        ssl_context=create_ssl_context(cafile=str(security.ca)), sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="limited", sasl_plain_password=USERS["limited"], request_timeout_ms=10_000,
    )  # fmt: skip
    await producer.start()
    try:
        await producer.send_and_wait(events, event(1))  # its own job: allowed
        for topic in own:
            with pytest.raises(TopicAuthorizationFailedError):
                await producer.send_and_wait(topic, b'{"id": "ep_forged"}', key=b"ep_forged")
    finally:
        await producer.stop()
    # the router's principal writes them, as the router does
    await produce(kafka.bootstrap, own[0], [b"{}"])
