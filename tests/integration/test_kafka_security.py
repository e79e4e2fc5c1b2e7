"""Security against the broker: one Kafka node of this module's own with an mTLS listener (client certificates
required), a SASL_SSL one and a SASL_PLAINTEXT one (PLAIN, SCRAM-SHA-256 and -512, OAUTHBEARER with Kafka's unsecured
JWT validator) and ACLs (StandardAuthorizer), as ``tests.kafka.security`` sets them up. In each mode the daemon,
``ping``, ``tail`` and ``stats`` connect; a wrong password, a refused token or certificate is an error naming the
setting (the daemon keeps trying, not ready, /readyz saying why; a command exits 2), an expired certificate is
refused by the config's check (exit 2); a principal allowed only the router's topics and group works, and a topic it
may not read (or not even describe) stops the start (exit 2) naming the topic and what to grant.

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

from tests.helpers import SECRET, DaemonProcess, Receiver, committed, env_with, eventually, produce, read_raw, unique
from tests.integration.conftest import KafkaBroker, Setup, kafka_of_its_own
from tests.kafka.security import REAUTH_MS, USERS, Security, token

PASSWORD_ENV = "WR_KAFKA_PASSWORD"


@pytest.fixture(scope="module")
async def kafka(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KafkaBroker]:
    work = tmp_path_factory.mktemp("kafka-security")
    needs = "needs TLS client certificates, SCRAM, OAUTHBEARER and ACLs"
    async with kafka_of_its_own(work, needs, security=Security(work / "tls")) as b:
        yield b


MECHANISMS = {"scram": "SCRAM-SHA-512", "scram-256": "SCRAM-SHA-256", "plain": "PLAIN", "oauth": "OAUTHBEARER"}


def settings(
    kafka: KafkaBroker, mode: str, tmp_path: Path, user: str = "router", client: str = "router"
) -> dict[str, Any]:
    """The [kafka] settings of ``mode`` for ``user`` (SASL) or the certificate ``client`` (mTLS): ``mtls``, or a key
    of ``MECHANISMS`` over SASL_SSL, or over SASL_PLAINTEXT with ``-plaintext`` after it (``plain-plaintext``)."""
    security = kafka.cluster.security
    assert security is not None
    ca = str(security.ca)
    if mode == "mtls":
        cert = security.client(client)
        listener = {"security_protocol": "SSL", "ssl_certfile": str(cert.cert), "ssl_keyfile": str(cert.key)}
        return {"bootstrap_servers": kafka.cluster.bootstrap_of("SSL"), "ssl_cafile": ca, **listener}
    mode, plaintext, _ = mode.partition("-plaintext")
    protocol = "SASL_PLAINTEXT" if plaintext else "SASL_SSL"
    sasl = {"bootstrap_servers": kafka.cluster.bootstrap_of(protocol), "security_protocol": protocol,
            "sasl_mechanism": MECHANISMS[mode], **({} if plaintext else {"ssl_cafile": ca})}  # fmt: skip
    if mode == "oauth":
        path = tmp_path / "token"
        path.write_text(token(user))
        return {**sasl, "sasl_oauth_token_file": str(path)}
    return {**sasl, "sasl_username": user, "sasl_password_env": PASSWORD_ENV}


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


@pytest.mark.parametrize(
    "mode",
    ["mtls", "scram", "scram-256", "plain", "oauth", "plain-plaintext", "scram-plaintext", "scram-256-plaintext"],
)
async def test_the_daemon_ping_tail_and_stats_connect(
    case: Case, kafka: KafkaBroker, tmp_path: Path, mode: str
) -> None:
    await case.write(settings(kafka, mode, tmp_path))
    await case.start()
    tail = await case.begin("tail", "--json", "--count", "1")
    assert tail.stderr is not None
    following = await asyncio.wait_for(tail.stderr.readline(), 60)  # from the end: connected before the event
    while mode == "plain-plaintext" and b"Sending username and password in the clear" in following:  # aiokafka's
        following = await asyncio.wait_for(tail.stderr.readline(), 60)
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


# --- refused while the daemon runs ---


async def committed_is(case: Case, offset: int) -> bool:
    """The group's committed offset of the case's events topic (one partition) is ``offset``."""
    return await committed(case.kafka.bootstrap, case.setup.group, case.setup.topic) == {0: offset}


async def ready_or_saying(d: DaemonProcess, expected: str | None) -> bool:
    """/readyz answers 200 (``expected`` None), or 503 with ``expected`` in its reason."""
    status, body = await d.get_json("/readyz")
    if expected is None:
        return status == 200
    return status == 503 and expected in json.dumps(body, ensure_ascii=False).replace('\\"', '"')


async def test_a_token_refused_while_the_daemon_runs_is_named_on_readyz_and_the_daemon_goes_on_once_one_is_taken(
    case: Case, kafka: KafkaBroker, tmp_path: Path
) -> None:
    """The token file's sidecar starts writing a token the cluster refuses (expired). Within an OAUTHBEARER session's
    life (``connections.max.reauth.ms``) the broker closes each connection; the clients log in again with the file's
    token and are refused: /readyz names the setting, one line says it, nothing is committed past what was recorded.
    A good token back in the file: ready again, every event delivered."""
    found = settings(kafka, "oauth", tmp_path)
    await case.write(found)
    d = await case.start()
    await produce(kafka.bootstrap, case.setup.topic, [event(0)])
    await case.receiver.wait_for(1)
    path = Path(found["sasl_oauth_token_file"])
    path.write_text(token("router", lifetime_s=-600))
    expected = f"kafka.sasl_oauth_token_file ({path}): the cluster refused the token"
    await eventually(lambda: ready_or_saying(d, expected), REAUTH_MS / 1000 + 60)
    await produce(kafka.bootstrap, case.setup.topic, [event(n) for n in range(1, 6)])
    await asyncio.sleep(3)
    assert await ready_or_saying(d, expected)  # still refused: said while it lasts
    assert await committed_is(case, 1)  # the first event's, recorded before the refusal; nothing since

    path.write_text(token("router"))
    await eventually(lambda: ready_or_saying(d, None), 60)
    await case.receiver.wait_for(6, within_s=60)
    await eventually(lambda: committed_is(case, 6), 30)
    delivered = sorted(json.loads(r.body)["n"] for r in case.receiver.requests)
    assert set(delivered) == set(range(6)), delivered  # nothing lost
    log = d.log()
    assert d.alive() and log.count(expected) == 1, log  # one line while it lasted (a minute at most here)
    assert "the cluster takes the router's credentials again" in log


class Limited:
    """A case run by ``User:limited`` over SCRAM-SHA-256, granted what docs/kafka.md says: the router's own topics and
    groups by prefix, its events topic (Read, Describe) and results topic (Read, Write, Describe) each by name, so
    that a test can take one of the latter back while the daemon runs."""

    EVENTS = ("Read", "Describe")
    RESULTS = ("Read", "Write", "Describe", "Create", "DescribeConfigs")

    def __init__(self, case: Case) -> None:
        self.case = case
        self.cluster = case.kafka.cluster

    async def start(self, tmp_path: Path) -> DaemonProcess:
        setup, grant = self.case.setup, self.cluster.grant
        await grant("User:limited", ["Read", "Write", "Describe", "Create", "DescribeConfigs"], topic=setup.prefix,
                    prefixed=True)  # fmt: skip
        await grant("User:limited", ["Read"], group=setup.group, prefixed=True)
        await grant("User:limited", self.EVENTS, topic=setup.topic)
        await grant("User:limited", self.RESULTS, topic=setup.results)
        self.case.env[PASSWORD_ENV] = USERS["limited"]
        await self.case.write(settings(self.case.kafka, "scram-256", tmp_path, user="limited"))
        return await self.case.start()


async def test_an_events_topic_whose_read_is_taken_back_while_the_daemon_runs_is_named_and_read_again_once_granted(
    case: Case, kafka: KafkaBroker, tmp_path: Path
) -> None:
    """kafka-acls --remove of Read on the events topic: the fetches are refused (TOPIC_AUTHORIZATION_FAILED). Not a
    batch that cannot be decoded (nothing held for an operator to skip), not a fetch tried again in a hot loop: /readyz
    names the topic and what to grant, one line says it; granted again, the events produced meanwhile are delivered,
    every one, and committed."""
    limited = Limited(case)
    d = await limited.start(tmp_path)
    await produce(kafka.bootstrap, case.setup.topic, [event(0)])
    await case.receiver.wait_for(1)
    await eventually(lambda: committed_is(case, 1), 30)
    errors_before = await d.metric('webhook_router_fetch_errors_total{consumer="events"}')

    await kafka.cluster.revoke("User:limited", ["Read"], topic=case.setup.topic)
    expected = f"topic {case.setup.topic} (kafka.topics): this principal may not read it (TOPIC_AUTHORIZATION_FAILED)"
    await produce(kafka.bootstrap, case.setup.topic, [event(n) for n in range(1, 6)])
    refused_at = asyncio.get_running_loop().time()
    await eventually(lambda: ready_or_saying(d, expected), 60)
    await asyncio.sleep(5)
    assert await ready_or_saying(d, expected)  # while it lasts
    errors = await d.metric('webhook_router_fetch_errors_total{consumer="events"}') - errors_before
    refused_for = asyncio.get_running_loop().time() - refused_at
    assert 1 <= errors <= 2 * refused_for + 5, (errors, refused_for)  # about one a second: no hot loop

    await kafka.cluster.grant("User:limited", ["Read"], topic=case.setup.topic)
    await eventually(lambda: ready_or_saying(d, None), 60)
    await case.receiver.wait_for(6, within_s=60)
    await eventually(lambda: committed_is(case, 6), 30)
    assert sorted(json.loads(r.body)["n"] for r in case.receiver.requests) == list(range(6))  # nothing lost
    log = d.log()
    assert log.count(expected) == 1 and "cannot be decoded" not in log, log
    assert f"topic {case.setup.topic} is read again after" in log, log


async def test_a_results_topic_whose_write_is_taken_back_while_the_daemon_runs_holds_the_commits_until_granted(
    case: Case, kafka: KafkaBroker, tmp_path: Path
) -> None:
    """kafka-acls --remove of Write on the results topic: the deliveries go on, their results are refused
    (TOPIC_AUTHORIZATION_FAILED) and wait, sent again once a second; /readyz names the topic, its setting and what to
    grant; no offset is committed past what was recorded. Granted again: the results are written and committed.

    The refused writes cost the idempotent producer sequence numbers the broker never saw: its next write to that
    partition is answered OUT_OF_ORDER_SEQUENCE_NUMBER (a fenced producer, on a real broker): a new producer takes
    over, said once, and what failed is written through it, every result once."""
    limited = Limited(case)
    d = await limited.start(tmp_path)
    await produce(kafka.bootstrap, case.setup.topic, [event(0)])
    await case.receiver.wait_for(1)
    await eventually(lambda: committed_is(case, 1), 30)

    await kafka.cluster.revoke("User:limited", ["Write"], topic=case.setup.results)
    expected = (f"topic {case.setup.results} (kafka.results_topic): this principal may not write it "
                "(TOPIC_AUTHORIZATION_FAILED)")  # fmt: skip
    await asyncio.sleep(2)  # the broker applies the change
    await produce(kafka.bootstrap, case.setup.topic, [event(n) for n in range(1, 6)])
    await case.receiver.wait_for(6, within_s=60)  # delivered: only their results wait
    await eventually(lambda: ready_or_saying(d, expected), 60)
    await asyncio.sleep(3)
    assert await ready_or_saying(d, expected) and await committed_is(case, 1)

    await kafka.cluster.grant("User:limited", ["Write"], topic=case.setup.results)
    await eventually(lambda: ready_or_saying(d, None), 60)
    await eventually(lambda: committed_is(case, 6), 30)
    offsets = sorted(
        json.loads(value)["source_offset"] for value in await read_raw(kafka.bootstrap, case.setup.results)
    )
    print(f"results written: {len(offsets)} for 6 events ({len(offsets) - len(set(offsets))} duplicates)")
    assert set(offsets) == set(range(6)) and len(offsets) == 6, offsets  # nothing lost, nothing twice
    assert len(case.receiver.requests) == 6
    log = d.log()
    assert log.count(expected) == 1, log
    assert f"writes to {case.setup.results} go on after" in log, log
    assert log.count("the producer of results was fenced (OutOfOrderSequenceNumber") == 1, log
    assert log.count("a new producer of results took over") == 1, log
    assert d.alive()


async def test_a_group_whose_read_is_taken_back_while_the_daemon_runs_is_named_never_held_and_goes_on_once_granted(
    case: Case, kafka: KafkaBroker, tmp_path: Path
) -> None:
    """kafka-acls --remove of Read on the router's groups (GROUP_AUTHORIZATION_FAILED to its heartbeats and commits):
    /readyz names the group and what to grant, one line each, no partition held as undecodable, nothing committed.
    Granted again, the daemon goes on without a restart: the refusal had ended aiokafka's heartbeat task, which
    aiokafka never starts again (its consumer was seen not to rejoin within 60 s of the grant), so the router
    replaced the consumer, and the new one joins once it may."""
    limited = Limited(case)
    d = await limited.start(tmp_path)
    await produce(kafka.bootstrap, case.setup.topic, [event(0)])
    await case.receiver.wait_for(1)
    await eventually(lambda: committed_is(case, 1), 30)

    await kafka.cluster.revoke("User:limited", ["Read"], group=case.setup.group, prefixed=True)
    expected = (f"consumer group {case.setup.group} (kafka.group_id): this principal may not use it "
                "(GROUP_AUTHORIZATION_FAILED): grant it Read on the group")  # fmt: skip
    await produce(kafka.bootstrap, case.setup.topic, [event(n) for n in range(1, 6)])
    await eventually(lambda: ready_or_saying(d, expected), 60)
    await asyncio.sleep(5)
    assert await ready_or_saying(d, expected) and await committed_is(case, 1)
    log = d.log()
    assert log.count(expected) == 1 and "cannot be decoded" not in log and d.alive(), log

    await kafka.cluster.grant("User:limited", ["Read"], group=case.setup.group, prefixed=True)
    await eventually(lambda: ready_or_saying(d, None), 90)
    await eventually(lambda: committed_is(case, 6), 30)
    assert {json.loads(q.body)["n"] for q in case.receiver.requests} == set(range(6))  # each, at least once
    log = d.log()
    assert log.count(expected) == 1 and f"consumer group {case.setup.group} is used again" in log, log
    assert "a new consumer replaced the broken one" in log and "cannot be decoded" not in log and d.alive(), log
    # replaced once, at the refusal (a warning); never again while refused, nor taken for aiokafka's bug
    assert await d.metric('webhook_router_consumer_rebuilds_total{consumer="events"}') == 1
    assert await d.metric('webhook_router_consumer_rebuilds_total{consumer="retries"}') in (0, 1)
    assert "Replacing it with a new one" not in log, log
