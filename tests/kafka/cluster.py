"""Real Apache Kafka (KRaft mode) on 127.0.0.1 for the tests: one combined node, or brokers plus a controller quorum.

The jars come from Maven Central through ``tests/kafka/pom.xml`` (the pinned version is ``KAFKA_VERSION``) and are
cached in ``${XDG_CACHE_HOME:-~/.cache}/webhook-router/kafka-<version>/libs``; a second fetch runs nothing, and two
processes fetching at once take turns on a lock file (the jars land in a temporary folder renamed into place). Java 17+
and Maven (``mvn``) must be on PATH; ``missing_tools()`` says which is not (for a skip), and
``WEBHOOK_ROUTER_KAFKA_LIBS`` may name a folder of jars instead (a Kafka tarball's ``libs/``), then Maven is not needed.

Shapes (``KafkaCluster(work_dir, brokers=..., controllers=...)``):

- ``brokers=1`` (``controllers`` left at ``None``): one node that is both broker and controller, id 1.
- ``brokers=N>1`` (default 3), ``controllers=None`` or ``3``: N broker-only nodes (ids 1..N) and three dedicated
  controllers (ids 101, 102, 103) forming the KRaft quorum. Killing a broker, even the leader of every partition,
  then never costs a controller election, and killing a controller never moves a partition leader: each failure is
  tested on its own. It costs three more JVMs (about 130 MB of RSS each, and a start of 5-7 s instead of 4-5 s
  on two cores).
- ``controllers=0``: every broker is also a controller (combined nodes, fewer JVMs; a kill hits both roles).

The quorum is static (``controller.quorum.voters``, storage formatted with a fresh cluster id). Replication follows
the brokers: ``default.replication.factor``, ``offsets.topic.replication.factor``,
``transaction.state.log.replication.factor`` and ``share.coordinator.state.topic.replication.factor`` are
``min(3, brokers)``, and ``min.insync.replicas`` with the internal topics' min ISR is 2 when that is 3, else 1.
Topics are still auto-created (Kafka's default). Timings are shortened for tests: a broker that stops heartbeating is
fenced after 3 s (``broker.session.timeout.ms``, default 9 s), so a killed leader is replaced 3-4 s later;
``group.initial.rebalance.delay.ms=0``; consumer sessions may be as short as 0.5 s (``group.min.session.timeout.ms``,
default 6 s: the integration tests use 3 s); the internal topics have 10 partitions, not 50; the log cleaner wakes
every second. ``overrides`` (a mapping of properties) wins over all of it, for every node. ``security``
(``tests.kafka.security.Security``) adds an SSL listener (client certificates required), a SASL_SSL one and a
SASL_PLAINTEXT one (PLAIN, SCRAM-SHA-256 and -512, OAUTHBEARER) to each broker, beside PLAINTEXT (which the harness
keeps using, a super user's), with StandardAuthorizer and ACLs (``grant``, ``revoke``); ``bootstrap_of("SSL")``,
``bootstrap_of("SASL_SSL")`` and ``bootstrap_of("SASL_PLAINTEXT")`` name them.

Each node lives in ``<work_dir>/node-<id>/``: ``server.properties``, ``data/`` (its log dir and metadata log),
``logs/server.log`` (Log4j 2, everything at INFO) and ``stdout.log`` (the JVM's own output: crashes, bad flags). A
node is ``java -Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp <libs>/* kafka.Kafka
server.properties`` (controllers get 256 MB of heap), in a process group of its own; brokers settle at about 270 MB
of RSS. Every JVM also maps a class-data archive (``class_archive()``: JDK's dynamic AppCDS, made once per java and
jars by a 6 s one-node run, cached next to the jars; ``WEBHOOK_ROUTER_KAFKA_CDS=0`` goes without): it halves a
node's start (1.3 s instead of 2.9 s) and the CPU it takes. Nodes started with
``die_with_parent=True`` (the default) get SIGKILL when the Python process that started them dies (Linux's
parent-death signal; also an ``atexit`` hook): a crashed test run leaves no brokers behind. The parent-death signal
follows the thread that started the node: start clusters from the event loop's thread, as fixtures do.

From a fixture::

    from tests.kafka import KafkaCluster, missing_tools

    @pytest.fixture(scope="session")
    async def kafka(tmp_path_factory):
        if (reason := missing_tools()) is not None:
            pytest.skip(reason)
        async with KafkaCluster(tmp_path_factory.mktemp("kafka"), brokers=3) as cluster:
            yield cluster          # cluster.bootstrap == "127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"

    await kafka.create_topics(["events"], partitions=3)             # replication factor: the cluster's default
    leader = await kafka.leader("events", 0)
    await kafka.kill(leader)                                        # SIGKILL; stop(leader) would be graceful
    new = await kafka.leader("events", 0, exclude={leader})         # waits for the election
    await kafka.start(leader)                                       # same node id, port and storage
    await kafka.wait_in_sync("events", 0)                           # back in the ISR
    controller = await kafka.active_controller()                    # the quorum's leader, from its quorum-state
    await kafka.describe_quorum()                                   # kafka-metadata-quorum describe --status

From a shell (``--dir`` defaults to ``$TMPDIR/webhook-router-kafka-<uid>``)::

    python -m tests.kafka fetch                       # only fetch the jars (CI can do it early)
    python -m tests.kafka up [--brokers 1|3] [--controllers 0|3] [--dir DIR]   # prints the bootstrap, Ctrl-C stops
    python -m tests.kafka up --security               # also mTLS and SASL listeners, ACLs (DIR/tls: the CA, certs)
    python -m tests.kafka up --detach                 # writes DIR/cluster.json, leaves the nodes running, returns
    python -m tests.kafka status                      # nodes, pids, RSS, the active controller
    python -m tests.kafka down                        # stops what DIR/cluster.json names (SIGTERM, then SIGKILL)
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from tests.kafka.security import LISTENERS, Security

KAFKA_VERSION = "4.2.2"  # as tests/kafka/pom.xml pins it; the cache folder is named after it
POM = Path(__file__).with_name("pom.xml")
LIBS_ENV = "WEBHOOK_ROUTER_KAFKA_LIBS"
CDS_ENV = "WEBHOOK_ROUTER_KAFKA_CDS"  # "0": no class-data archive
STATE_FILE = "cluster.json"
HOST = "127.0.0.1"
CONTROLLER_BASE_ID = 100  # dedicated controllers are 101, 102, ...; brokers are 1..N

BROKER_HEAP = "512m"
CONTROLLER_HEAP = "256m"
# Small and quick to start: the serial collector (no GC threads to share two cores with), C1 only (three brokers and
# three controllers are up in 5 s instead of 8 s, with two thirds of the CPU and ~10% less RSS; fast enough for
# tests), a small initial heap (the default is 1/64 of the RAM).
JVM_OPTS = ("-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:+ExitOnOutOfMemoryError")
TOOL_JVM_OPTS = ("-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xlog:all=warning:stderr")

_LOG4J = """\
status = warn
shutdownHook = disable
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = warn
"""

_TOOLS_LOG4J = """\
status = warn
shutdownHook = disable
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.err.ref = err
"""


class KafkaSetupError(RuntimeError):
    """Kafka could not be fetched, formatted or started (the message says why, with the log's last lines)."""


def missing_tools() -> str | None:
    """Why a cluster cannot run here (no ``java``, or neither ``mvn`` nor cached jars), or None."""
    if shutil.which("java") is None:
        return "no `java` on PATH: the Kafka cluster needs Java 17 or newer"
    if os.environ.get(LIBS_ENV) or (cache_dir() / "libs" / ".complete").exists():
        return None
    if shutil.which("mvn") is None:
        return "no `mvn` on PATH: the Kafka cluster's jars are fetched from Maven Central with Maven"
    return None


def cache_dir(version: str = KAFKA_VERSION) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "webhook-router" / f"kafka-{version}"


def fetch(version: str = KAFKA_VERSION, *, verbose: bool = False) -> Path:
    """The folder of the broker's jars: fetched with Maven once, then cached. Safe to run concurrently."""
    if env := os.environ.get(LIBS_ENV):
        return Path(env)
    cache = cache_dir(version)
    libs = cache / "libs"
    if (libs / ".complete").exists():
        return libs
    if shutil.which("mvn") is None:
        raise KafkaSetupError("no `mvn` on PATH to fetch Kafka's jars with (or set WEBHOOK_ROUTER_KAFKA_LIBS)")
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent fetch waits here, then finds the jars in place
        if (libs / ".complete").exists():
            return libs
        tmp = Path(tempfile.mkdtemp(prefix="libs.tmp-", dir=cache))
        try:
            argv = ["mvn", "-B", "-Dstyle.color=never", "-f", str(POM), "dependency:copy-dependencies"]
            argv += [f"-DoutputDirectory={tmp}", f"-Dkafka.version={version}"]
            if not verbose:
                argv.insert(1, "-q")
            done = subprocess.run(argv, capture_output=not verbose, text=True, check=False)
            if done.returncode != 0:
                tail = (done.stdout or "")[-3000:] + (done.stderr or "")[-2000:]
                raise KafkaSetupError(f"mvn could not fetch Kafka {version} (exit {done.returncode}):\n{tail}")
            jars = sorted(p.name for p in tmp.glob("*.jar"))
            if not any(name.startswith(f"kafka_2.13-{version}") for name in jars):
                raise KafkaSetupError(f"mvn fetched no kafka_2.13-{version}.jar into {tmp}")
            (tmp / ".complete").write_text("\n".join(jars) + "\n")
            if libs.exists():  # a fetch interrupted before its rename cannot leave this; a hand-made folder can
                shutil.rmtree(libs)
            tmp.rename(libs)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return libs


def _archive_path(version: str, libs: Path) -> Path | None:
    """Where the class-data archive for this java and these jars is kept (it may not exist yet)."""
    found = shutil.which("java")
    if found is None:
        return None
    java = Path(found).resolve()
    st = java.stat()
    key = hashlib.sha256(f"{java}|{st.st_size}|{st.st_mtime_ns}|{libs.resolve()}".encode()).hexdigest()[:16]
    return cache_dir(version) / f"classes-{key}.jsa"


def class_archive(version: str = KAFKA_VERSION, libs: Path | None = None) -> Path | None:
    """A CDS archive of the classes a node loads (JDK's dynamic AppCDS), made once per java and jars: a one-node
    run of about 6 s, then cached next to the jars. Every JVM started with it starts in about half the time and CPU
    (1.3 s instead of 2.9 s for a node, on two cores). None when ``WEBHOOK_ROUTER_KAFKA_CDS=0`` or when making it
    failed (the reason is left in ``classes-*.failed``, and it is not tried again for a day)."""
    if os.environ.get(CDS_ENV, "1") == "0":
        return None
    libs = libs or fetch(version)
    archive = _archive_path(version, libs)
    if archive is None:
        return None
    if archive.exists():
        return archive
    failed = archive.with_suffix(".failed")
    if failed.exists() and time.time() - failed.stat().st_mtime < 86400:
        return None
    archive.parent.mkdir(parents=True, exist_ok=True)
    with (archive.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if archive.exists():
            return archive
        if failed.exists() and time.time() - failed.stat().st_mtime < 86400:
            return None
        try:
            _train(version, libs, archive)
        except (KafkaSetupError, OSError, subprocess.SubprocessError) as exc:
            failed.write_text(f"{exc}\n")
            return None
    return archive if archive.exists() else None


def _train(version: str, libs: Path, archive: Path) -> None:
    """Run one combined node with -XX:ArchiveClassesAtExit until it has started, stop it: the archive is written
    as the JVM exits, into a temporary folder, then renamed into place."""
    with tempfile.TemporaryDirectory(prefix="cds-", dir=archive.parent) as tmp:
        dump = Path(tmp) / "classes.jsa"
        opts = [*JVM_OPTS, f"-XX:ArchiveClassesAtExit={dump}"]
        trainer = KafkaCluster(Path(tmp) / "cluster", brokers=1, version=version, jvm_opts=opts, cds=False)
        trainer._libs = libs
        trainer._write_files()
        node = trainer.nodes[1]
        storage = ["format", "--cluster-id", trainer.cluster_id, "--config", str(node.config)]
        argv = trainer._java("kafka.tools.StorageTool", *storage, tool=True)
        subprocess.run(argv, capture_output=True, check=True, timeout=120)
        trainer._launch(node)
        proc = node.proc
        assert proc is not None
        try:
            deadline = time.monotonic() + 120
            while "Kafka Server started" not in (node.log.read_text(errors="replace") if node.log.exists() else ""):
                if proc.poll() is not None:
                    raise KafkaSetupError(trainer._why_dead(node))
                if time.monotonic() > deadline:
                    raise KafkaSetupError("the node run for the class-data archive did not start in 120 s")
                time.sleep(0.2)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            trainer._forget(node)
        if not dump.exists() or dump.stat().st_size == 0:
            raise KafkaSetupError(f"the JVM wrote no class-data archive (exit {proc.returncode})")
        dump.replace(archive)


def _free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1, below the ephemeral range (a client socket's port cannot take one between a kill and
    the restart of the node listening on it)."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < count:
            port = random.randint(max(1024, low - 12000), low - 1)
            sock = socket.socket()
            try:
                sock.bind((HOST, port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def _cluster_id() -> str:
    """A Kafka Uuid as StorageTool's random-uuid prints it (base64url, no padding, never starting with '-')."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


_libc: Any = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _die_with_parent(parent: int) -> Any:
    def preexec() -> None:  # in the child, before exec: SIGKILL when the parent (thread) dies
        if _libc is not None:
            _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:  # the parent died before the prctl
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


# Nodes started with die_with_parent: SIGKILLed at interpreter exit if still running.
_ATEXIT: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _kill_leftovers() -> None:
    for pid, proc in list(_ATEXIT.items()):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


@dataclass
class Node:
    """One Kafka process: a broker, a controller, or both (combined)."""

    node_id: int
    roles: tuple[str, ...]  # ("broker",), ("controller",) or ("broker", "controller")
    port: int  # the client (PLAINTEXT) listener; 0 for a controller-only node
    controller_port: int  # the CONTROLLER listener; 0 for a broker-only node
    dir: Path
    secure_ports: dict[str, int] = field(default_factory=dict)  # a broker's SSL and SASL listeners (security)
    pid: int | None = None  # of the running JVM, else None
    paused: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def is_broker(self) -> bool:
        return "broker" in self.roles

    @property
    def is_controller(self) -> bool:
        return "controller" in self.roles

    @property
    def address(self) -> str:
        """host:port of the client listener (brokers), else of the controller listener."""
        return f"{HOST}:{self.port or self.controller_port}"

    @property
    def config(self) -> Path:
        return self.dir / "server.properties"

    @property
    def log(self) -> Path:
        return self.dir / "logs" / "server.log"

    @property
    def running(self) -> bool:
        """The JVM is alive (paused or not)."""
        if self.proc is not None:
            return self.proc.poll() is None
        if self.pid is None:
            return False
        try:  # a node of an attached cluster (a state file): not our child; make sure the pid is still that node's
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return str(self.config).encode() in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"

    def rss(self) -> int:
        """Resident memory of the JVM in bytes (0 when not running)."""
        if self.pid is None or not self.running:
            return 0
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


@dataclass(frozen=True)
class PartitionState:
    """A partition as the metadata shows it: leader -1 while there is none."""

    topic: str
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class KafkaCluster:
    """Apache Kafka in KRaft mode on 127.0.0.1, in ``work_dir``: the shapes are in the module's docstring.

    ``async with KafkaCluster(...)`` starts it (until every broker is registered and unfenced, as a metadata
    request to each broker shows) and stops it. Node ids: brokers 1..N, dedicated controllers 101, 102, 103.
    """

    def __init__(
        self,
        work_dir: Path | str,
        *,
        brokers: int = 3,
        controllers: int | None = None,
        version: str = KAFKA_VERSION,
        broker_heap: str = BROKER_HEAP,
        controller_heap: str = CONTROLLER_HEAP,
        jvm_opts: Sequence[str] = JVM_OPTS,
        overrides: Mapping[str, str | int] | None = None,
        die_with_parent: bool = True,
        cds: bool = True,
        security: Security | None = None,
    ) -> None:
        if brokers < 1:
            raise ValueError("a cluster needs at least one broker")
        if controllers is None:
            controllers = 0 if brokers == 1 else 3
        self.work_dir = Path(work_dir).absolute()
        self.version = version
        self.broker_heap = broker_heap
        self.controller_heap = controller_heap
        self.jvm_opts = tuple(jvm_opts)
        self.overrides = {k: str(v) for k, v in (overrides or {}).items()}
        self.die_with_parent = die_with_parent
        self.cluster_id = _cluster_id()
        self.replication_factor = min(3, brokers)
        self.min_insync = 2 if self.replication_factor >= 3 else 1
        self._formatted = False
        self.cds = cds
        self.security = security
        self._libs: Path | None = None
        self._archive: Path | None = None
        self.nodes: dict[int, Node] = {}
        # Every port of the cluster from one call: ports taken by separate calls may be the same one (each call's are
        # free while it holds them, and let go when it returns), which a clean-clone CI run met once (a SASL listener
        # on the controller's port: the brokers would not start).
        own = 2 * brokers if controllers == 0 else brokers + controllers
        secure = len(LISTENERS) * brokers if security is not None else 0
        ports = _free_ports(own + secure)
        if controllers == 0:
            for i in range(brokers):
                node_id = i + 1
                self.nodes[node_id] = Node(
                    node_id, ("broker", "controller"), ports[2 * i], ports[2 * i + 1], self.work_dir / f"node-{node_id}"
                )
        else:
            for i in range(brokers):
                node_id = i + 1
                self.nodes[node_id] = Node(node_id, ("broker",), ports[i], 0, self.work_dir / f"node-{node_id}")
            for i in range(controllers):
                node_id = CONTROLLER_BASE_ID + i + 1
                port = ports[brokers + i]
                self.nodes[node_id] = Node(node_id, ("controller",), 0, port, self.work_dir / f"node-{node_id}")
        if security is not None:
            extra = iter(ports[own:])
            for node in (n for n in self.nodes.values() if n.is_broker):
                node.secure_ports = {name: next(extra) for name in LISTENERS}

    # -- what the tests read ---------------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """Every broker's client listener, comma-separated (what bootstrap_servers takes)."""
        return ",".join(n.address for n in self.nodes.values() if n.is_broker)

    def bootstrap_of(self, listener: str) -> str:
        """Every broker's ``listener``: ``PLAINTEXT``, or with ``security`` one of ``security.LISTENERS``."""
        if listener == "PLAINTEXT":
            return self.bootstrap
        return ",".join(f"{HOST}:{n.secure_ports[listener]}" for n in self.nodes.values() if n.is_broker)

    @property
    def broker_ids(self) -> list[int]:
        return [n.node_id for n in self.nodes.values() if n.is_broker]

    @property
    def controller_ids(self) -> list[int]:
        return [n.node_id for n in self.nodes.values() if n.is_controller]

    def node(self, node_id: int) -> Node:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise ValueError(f"no node {node_id} (nodes: {sorted(self.nodes)})") from None

    def running_brokers(self) -> list[Node]:
        """Brokers whose JVM is alive and not paused (whether or not the controller has fenced them yet)."""
        return [n for n in self.nodes.values() if n.is_broker and n.running and not n.paused]

    def rss(self) -> dict[int, int]:
        """Resident memory per node id, in bytes."""
        return {node_id: n.rss() for node_id, n in self.nodes.items()}

    # -- files -----------------------------------------------------------------------------------------------------

    def _properties(self, node: Node) -> dict[str, str]:
        voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in self.nodes.values() if n.is_controller)
        listeners = []
        if node.is_broker:
            listeners.append(f"PLAINTEXT://{HOST}:{node.port}")
            listeners += [f"{name}://{HOST}:{port}" for name, port in node.secure_ports.items()]
        if node.is_controller:
            listeners.append(f"CONTROLLER://{HOST}:{node.controller_port}")
        rf, isr = str(self.replication_factor), str(self.min_insync)
        props = {
            "process.roles": ",".join(node.roles),
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "controller.listener.names": "CONTROLLER",
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(listeners),
            "listener.security.protocol.map": ",".join(
                f"{name}:{'PLAINTEXT' if name == 'CONTROLLER' else name}"
                for name in ("CONTROLLER", "PLAINTEXT", *(LISTENERS if self.security is not None else ()))
            ),
            "log.dirs": str(node.dir / "data"),
            # Failure detection for tests: heartbeats every 0.5 s, fenced (and its leaderships moved) after 3 s.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            "num.partitions": "1",
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "500",  # the tests' consumers use 3 s sessions; Kafka's floor is 6 s
            "log.cleaner.backoff.ms": "1000",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        if node.is_broker:
            props["inter.broker.listener.name"] = "PLAINTEXT"
        if self.security is not None:
            props.update(self.security.broker_properties())
        props.update(self.overrides)
        return props

    def _write_files(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "log4j2.properties").write_text(_LOG4J)
        self._write_tool_files()
        for node in self.nodes.values():
            if node.dir.exists():  # a previous cluster's node in the same work dir: its storage has another id
                shutil.rmtree(node.dir)
            (node.dir / "logs").mkdir(parents=True)
            text = "".join(f"{k}={v}\n" for k, v in self._properties(node).items())
            node.config.write_text(text)

    def _write_tool_files(self) -> None:
        if not (self.work_dir / "tools.properties").exists():
            (self.work_dir / "tools-log4j2.properties").write_text(_TOOLS_LOG4J)
            (self.work_dir / "tools.properties").write_text("request.timeout.ms=3000\ndefault.api.timeout.ms=8000\n")

    def _java(
        self, main: str, *args: str, heap: str | None = None, tool: bool = False, logs: Path | None = None
    ) -> list[str]:
        if self._libs is None:  # an attached cluster's tools: the jars are cached, this is quick
            self._libs = fetch(self.version)
            archive = _archive_path(self.version, self._libs) if self.cds else None
            self._archive = archive if archive is not None and archive.exists() else None
        java = shutil.which("java") or "java"
        if tool:
            self._write_tool_files()
            opts = [*TOOL_JVM_OPTS, f"-Dlog4j2.configurationFile={self.work_dir / 'tools-log4j2.properties'}"]
        else:
            opts = [f"-Xmx{heap}", *self.jvm_opts, f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}"]
            opts.append(f"-Dkafka.logs.dir={logs}")
        if self._archive is not None:
            opts.append(f"-XX:SharedArchiveFile={self._archive}")
        return [java, *opts, "-Djava.awt.headless=true", "-cp", f"{self._libs}/*", main, *args]

    async def _run_tool(self, main: str, *args: str, timeout: float = 60) -> str:
        argv = self._java(main, *args, tool=True)
        try:
            done = await asyncio.to_thread(
                subprocess.run, argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.work_dir
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaSetupError(f"{main} {' '.join(args)}: no answer in {timeout} s") from exc
        if done.returncode != 0:
            raise KafkaSetupError(f"{main} {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done.stdout

    async def _format(self) -> None:
        """``kafka-storage format`` for every node, two at a time (there are two cores to share)."""
        gate = asyncio.Semaphore(2)

        scram = self.security.format_arguments() if self.security is not None else []

        async def one(node: Node) -> None:
            async with gate:
                await self._run_tool(
                    "kafka.tools.StorageTool", "format", "--cluster-id", self.cluster_id, "--config", str(node.config),
                    *(scram if node.is_controller else []),
                )  # fmt: skip

        await asyncio.gather(*(one(n) for n in self.nodes.values()))
        self._formatted = True

    # -- processes -------------------------------------------------------------------------------------------------

    def _launch(self, node: Node) -> None:
        heap = self.broker_heap if node.is_broker else self.controller_heap
        argv = self._java("kafka.Kafka", str(node.config), heap=heap, logs=node.dir / "logs")
        with (node.dir / "stdout.log").open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=node.dir,
                start_new_session=True,  # its own process group: a Ctrl-C meant for the tests does not reach it
                preexec_fn=_die_with_parent(os.getpid()) if self.die_with_parent else None,
            )
        node.proc, node.pid, node.paused = proc, proc.pid, False
        if self.die_with_parent:
            _ATEXIT[proc.pid] = proc

    def _signal(self, node: Node, sig: signal.Signals) -> None:
        if node.pid is not None and node.running:
            with contextlib.suppress(ProcessLookupError):
                if node.proc is not None:
                    os.killpg(node.pid, sig)  # its process group: the JVM and anything it started
                else:
                    os.kill(node.pid, sig)

    async def _wait_exit(self, node: Node, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while node.running:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        self._forget(node)
        return True

    def _forget(self, node: Node) -> None:
        if node.pid is not None:
            _ATEXIT.pop(node.pid, None)
        node.proc, node.pid, node.paused = None, None, False

    def _why_dead(self, node: Node) -> str:
        code = node.proc.returncode if node.proc is not None else None
        tail = ""
        for path in (node.dir / "stdout.log", node.log):
            with contextlib.suppress(OSError):
                lines = path.read_text(errors="replace").splitlines()
                errors = [line for line in lines if " ERROR " in line or "Exception" in line][-5:]
                tail += f"\n--- {path} (last lines{', errors' if errors else ''}):\n" + "\n".join(errors or lines[-15:])
        return f"node {node.node_id} exited (code {code}){tail}"

    async def _stop_nodes(self, nodes: Iterable[Node], timeout: float, last_grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; with ``last_grace``, the last node still running once all the
        others have exited gets only that long: a quorum's last controller, which has nobody left to resign to,
        would wait 5 s for them (KafkaRaftClient's shutdown timeout)."""
        nodes = [n for n in nodes if n.running]
        for node in nodes:
            if node.paused:
                self._signal(node, signal.SIGCONT)  # a stopped JVM must run to act on SIGTERM
            self._signal(node, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        alone_since: float | None = None
        while left := [n for n in nodes if n.running]:
            now = time.monotonic()
            if len(left) == 1 and len(nodes) > 1 and last_grace is not None:
                alone_since = alone_since or now
                if now - alone_since > last_grace:
                    break
            if now > deadline:
                break
            await asyncio.sleep(0.05)
        for node in nodes:
            if node.running:
                self._signal(node, signal.SIGKILL)
                await self._wait_exit(node, 10)
            self._forget(node)

    # -- the operations --------------------------------------------------------------------------------------------

    async def start(self, node_id: int | None = None, *, timeout: float = 180) -> None:
        """Start the cluster (fetching the jars and formatting the storage the first time) and wait until it is
        ready; or start one stopped or killed node again, with its id, ports and storage, and wait until it is up
        (a broker: registered and unfenced; a controller: listening)."""
        deadline = time.monotonic() + timeout
        if self._libs is None:  # the first time from a thread: it may run Maven, or a node to make the archive
            self._libs = await asyncio.to_thread(fetch, self.version)
            if self.cds:
                self._archive = await asyncio.to_thread(class_archive, self.version, self._libs)
        if not self._formatted:
            self._write_files()
            await self._format()
        if node_id is not None:
            node = self.node(node_id)
            if node.running:
                raise RuntimeError(f"node {node_id} is already running (pid {node.pid})")
            self._launch(node)
            await self._wait_up([node], deadline)
            return
        for node in self.nodes.values():
            if not node.running:
                self._launch(node)
        await self._wait_up(list(self.nodes.values()), deadline)

    async def stop(self, node_id: int | None = None, *, timeout: float = 20) -> None:
        """Stop one node gracefully (SIGTERM: a broker's controlled shutdown moves its leaderships first; SIGKILL
        after ``timeout``), or the whole cluster: the brokers first (their controlled shutdown needs the
        controllers), then the controllers, the last of which, alone, gets SIGKILL after a second (it would wait
        5 s to resign to voters that are gone)."""
        if node_id is not None:
            await self._stop_nodes([self.node(node_id)], timeout)
            return
        brokers = [n for n in self.nodes.values() if n.is_broker and not n.is_controller]
        await self._stop_nodes(brokers, timeout)
        await self._stop_nodes(self.nodes.values(), timeout, last_grace=1.0)

    async def kill(self, node_id: int) -> None:
        """SIGKILL one node (a crash: no controlled shutdown) and reap it."""
        node = self.node(node_id)
        if not node.running:
            raise RuntimeError(f"node {node_id} is not running")
        self._signal(node, signal.SIGKILL)
        await self._wait_exit(node, 10)

    def pause(self, node_id: int) -> None:
        """SIGSTOP one node: its sockets stay open and nothing answers (a hung host)."""
        node = self.node(node_id)
        if not node.running:
            raise RuntimeError(f"node {node_id} is not running")
        self._signal(node, signal.SIGSTOP)
        node.paused = True

    def resume(self, node_id: int) -> None:
        node = self.node(node_id)
        self._signal(node, signal.SIGCONT)
        node.paused = False

    async def close(self) -> None:
        await self.stop()

    async def __aenter__(self) -> KafkaCluster:
        try:
            await self.start()
        except BaseException:
            await self.stop(timeout=5)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- readiness and metadata ------------------------------------------------------------------------------------

    async def _wait_up(self, nodes: list[Node], deadline: float) -> None:
        for node in nodes:  # listening first (cheap), the JVM alive throughout
            for port in (p for p in (node.controller_port, node.port) if p):
                while not await _listening(port):
                    self._check_alive(nodes)
                    if time.monotonic() > deadline:
                        raise KafkaSetupError(f"node {node.node_id} is not listening on {HOST}:{port}")
                    await asyncio.sleep(0.1)
        if any(n.is_broker for n in nodes):
            await self.wait_ready(timeout=max(1.0, deadline - time.monotonic()))

    def _check_alive(self, nodes: Iterable[Node]) -> None:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is not None:
                raise KafkaSetupError(self._why_dead(node))

    async def wait_ready(self, timeout: float = 60) -> None:
        """Until every running broker answers a metadata request listing every running broker (registered with
        the controllers and unfenced)."""
        deadline = time.monotonic() + timeout
        seen: dict[int, set[int]] = {}
        while True:
            self._check_alive(n for n in self.nodes.values() if n.pid is not None)
            expected = {n.node_id for n in self.running_brokers()}
            seen = {}
            for node in self.running_brokers():
                with contextlib.suppress(KafkaError, OSError, TimeoutError):
                    meta = await self._metadata(node, [])
                    seen[node.node_id] = {b["node_id"] for b in meta["brokers"]}
            if all(expected <= seen.get(b, set()) for b in expected):
                return
            if time.monotonic() > deadline:
                raise KafkaSetupError(f"brokers {sorted(expected)} not all registered in {timeout} s: saw {seen}")
            await asyncio.sleep(0.2)

    async def _metadata(self, node: Node, topics: list[str], timeout_s: float = 5) -> dict[str, Any]:
        """A metadata request to that broker itself (auto-creation off: asking about a topic never creates it)."""
        client = AIOKafkaClient(bootstrap_servers=node.address, request_timeout_ms=int(timeout_s * 1000))
        try:
            async with asyncio.timeout(timeout_s + 1):
                await client.bootstrap()
                response = await client.send(node.node_id, MetadataRequest(topics, allow_auto_topic_creation=False))
            result: dict[str, Any] = response.to_object()
            return result
        finally:
            await client.close()

    async def metadata(self, topics: list[str] | None = None) -> dict[str, Any]:
        """A metadata response (``brokers``, ``topics``, ...) from the first running broker that answers."""
        last: BaseException | None = None
        for node in random.sample(self.running_brokers(), k=len(self.running_brokers())):
            try:
                return await self._metadata(node, topics or [])
            except (KafkaError, OSError, TimeoutError) as exc:
                last = exc
        raise KafkaSetupError(f"no running broker answered a metadata request: {last!r}")

    async def live_brokers(self) -> set[int]:
        """The brokers the metadata lists (registered and unfenced)."""
        meta = await self.metadata()
        return {b["node_id"] for b in meta["brokers"]}

    async def partition(self, topic: str, partition: int = 0) -> PartitionState:
        """The partition's leader, replicas and ISR as a running broker's metadata has them now."""
        meta = await self.metadata([topic])
        for t in meta["topics"]:
            if t["topic"] != topic:
                continue
            for p in t["partitions"]:
                if p["partition"] == partition:
                    return PartitionState(topic, partition, p["leader"], tuple(p["replicas"]), tuple(p["isr"]))
            raise KafkaSetupError(f"{topic} has no partition {partition} (error code {t['error_code']})")
        raise KafkaSetupError(f"no metadata for {topic}")

    async def leader(self, topic: str, partition: int = 0, *, exclude: Iterable[int] = (), timeout: float = 30) -> int:
        """The id of the partition's leader, waiting until there is one not in ``exclude`` (a new leader after a
        kill: ``leader(t, 0, exclude={old})``)."""
        excluded = set(exclude)
        deadline = time.monotonic() + timeout
        state: PartitionState | None = None
        while True:
            with contextlib.suppress(KafkaSetupError):
                state = await self.partition(topic, partition)
                if state.leader >= 0 and state.leader not in excluded:
                    return state.leader
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no leader for {topic}-{partition} outside {sorted(excluded)} in {timeout} s: {state}"
                )
            await asyncio.sleep(0.2)

    async def wait_in_sync(self, topic: str, partition: int = 0, *, timeout: float = 60) -> PartitionState:
        """Until every replica of the partition is in its ISR (a restarted broker has caught up)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(KafkaSetupError):
                state = await self.partition(topic, partition)
                if state.leader >= 0 and set(state.isr) == set(state.replicas):
                    return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}-{partition} not fully in sync in {timeout} s")
            await asyncio.sleep(0.2)

    async def create_topics(
        self,
        names: list[str],
        partitions: int = 1,
        replication_factor: int = -1,
        config: Mapping[str, str] | None = None,
        *,
        timeout: float = 30,
    ) -> None:
        """Create topics (existing ones are left alone) and wait until every partition has a leader. Replication
        factor -1: the cluster's default (3 with three brokers). EmbeddedBroker.create_topics's signature, extended."""
        admin = AIOKafkaAdminClient(bootstrap_servers=",".join(n.address for n in self.running_brokers()))
        await admin.start()
        try:
            # aiokafka wants an empty assignment with replication factor -1, and none with a number.
            assignments: dict[int, list[int]] | None = {} if replication_factor == -1 else None
            topics = [
                NewTopic(n, partitions, replication_factor, assignments, topic_configs=dict(config or {}))
                for n in names
            ]
            response = await admin.create_topics(topics, timeout_ms=int(timeout * 1000))
        finally:
            await admin.close()
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
                raise KafkaSetupError(f"creating {name}: error code {code} ({entry[2:]})")
        await self._known_everywhere(names, partitions, timeout)  # a leader for each partition, on every broker

    async def _known_everywhere(self, names: list[str], partitions: int, timeout: float) -> None:
        """Until every running broker's own metadata has each partition of ``names`` with a leader: the controller
        answers CreateTopics before its brokers learn of the topics, and one broker knowing a leader is not all of
        them (a test asking another right after heard UNKNOWN_TOPIC_OR_PARTITION, error code 3)."""
        deadline = time.monotonic() + timeout
        for node in self.running_brokers():
            while True:
                with contextlib.suppress(KafkaError, OSError, TimeoutError):
                    meta = await self._metadata(node, names)
                    led = {
                        (t["topic"], p["partition"])
                        for t in meta["topics"]
                        if t["error_code"] == 0
                        for p in t["partitions"]
                        if p["leader"] >= 0
                    }
                    if all((n, p) in led for n in names for p in range(partitions)):
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"broker {node.node_id} does not know every partition of {names} in {timeout} s")
                await asyncio.sleep(0.1)

    async def grant(self, principal: str, operations: Sequence[str], **resource: Any) -> None:
        """Allow ``principal`` (``User:limited``) ``operations`` (``Read``, ``Write``, ``Describe``, ...) on a
        ``topic=`` or a ``group=`` (``prefixed=True``: every one whose name starts so): ``kafka-acls --add``, through
        the PLAINTEXT listener (a super user's). Runs a JVM: 1-2 s."""
        await self._acls("--add", principal, operations, **resource)

    async def revoke(self, principal: str, operations: Sequence[str], **resource: Any) -> None:
        """Take back what ``grant`` with the same arguments allowed: ``kafka-acls --remove``."""
        await self._acls("--remove", principal, operations, **resource)

    async def _acls(
        self, action: str, principal: str, operations: Sequence[str], *, topic: str | None = None,
        group: str | None = None, prefixed: bool = False,
    ) -> None:  # fmt: skip
        resource = ["--topic", topic] if topic is not None else ["--group", str(group)]
        ops = [arg for op in operations for arg in ("--operation", op)]
        await self._run_tool(
            "org.apache.kafka.tools.AclCommand", "--bootstrap-server", self.bootstrap, "--command-config",
            str(self.work_dir / "tools.properties"), action, "--force", "--allow-principal", principal, *resource,
            *ops, "--resource-pattern-type", "prefixed" if prefixed else "literal",
        )  # fmt: skip

    async def describe_quorum(self, *, timeout: float = 30) -> dict[str, str]:
        """``kafka-metadata-quorum --bootstrap-controller ... describe --status``, as a dict of its lines
        (``LeaderId``, ``LeaderEpoch``, ``HighWatermark``, ``CurrentVoters``, ...), asked of the running controllers,
        again until one answers. Runs a JVM: about a second; each try gives up after 8 s (during an election the
        tool asks the old leader)."""
        deadline = time.monotonic() + timeout
        while True:
            controllers = [n for n in self.nodes.values() if n.is_controller and n.running and not n.paused]
            if not controllers:
                raise KafkaSetupError("no controller is running")
            bootstrap = ",".join(f"{HOST}:{n.controller_port}" for n in controllers)
            try:
                out = await self._run_tool(
                    "org.apache.kafka.tools.MetadataQuorumCommand",
                    "--bootstrap-controller",
                    bootstrap,
                    "--command-config",
                    str(self.work_dir / "tools.properties"),
                    "describe",
                    "--status",
                    timeout=20,
                )
            except KafkaSetupError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
                continue
            status: dict[str, str] = {}
            for line in out.splitlines():
                key, sep, value = line.partition(":")
                if sep:
                    status[key.strip()] = value.strip()
            return status

    def quorum_states(self) -> dict[int, dict[str, Any]]:
        """Each running controller's view of the quorum as it last wrote it (on every change of state):
        ``<data>/__cluster_metadata-0/quorum-state``, JSON with ``leaderId`` (-1 while there is none),
        ``leaderEpoch``, ``votedId``."""
        states: dict[int, dict[str, Any]] = {}
        for node in self.nodes.values():
            if node.is_controller and node.running and not node.paused:
                with contextlib.suppress(OSError, ValueError):
                    path = node.dir / "data" / "__cluster_metadata-0" / "quorum-state"
                    states[node.node_id] = json.loads(path.read_text())
        return states

    async def active_controller(self, *, exclude: Iterable[int] = (), timeout: float = 30) -> int:
        """The node id of the quorum's leader (the active controller), waiting until there is one, running and not
        in ``exclude`` (a new one after killing the old: ``active_controller(exclude={old})``). Read from the
        running controllers' quorum-state files (the leader of the highest epoch any of them has seen): instant,
        where ``describe_quorum()`` runs a JVM and, during an election, waits on the old leader."""
        excluded = set(exclude)
        deadline = time.monotonic() + timeout
        while True:
            states = self.quorum_states()
            latest = max(states.values(), key=lambda st: int(st.get("leaderEpoch", -1)), default=None)
            leader = int(latest.get("leaderId", -1)) if latest else -1
            if leader in self.nodes and leader not in excluded and self.nodes[leader].running:
                return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"no active controller outside {sorted(excluded)} in {timeout} s: {states}")
            await asyncio.sleep(0.1)

    # -- a cluster left running by the command line ----------------------------------------------------------------

    def save_state(self) -> Path:
        """Write ``<work_dir>/cluster.json``: what ``attach`` (``python -m tests.kafka down``) reads."""
        state = {
            "version": self.version,
            "cluster_id": self.cluster_id,
            "bootstrap": self.bootstrap,
            "replication_factor": self.replication_factor,
            "min_insync": self.min_insync,
            "broker_heap": self.broker_heap,
            "controller_heap": self.controller_heap,
            "jvm_opts": list(self.jvm_opts),
            "overrides": self.overrides,
            "security": str(self.security.folder) if self.security is not None else None,
            "nodes": [
                {
                    "node_id": n.node_id,
                    "roles": list(n.roles),
                    "port": n.port,
                    "controller_port": n.controller_port,
                    "secure_ports": n.secure_ports,
                    "pid": n.pid if n.running else None,
                }
                for n in self.nodes.values()
            ],
        }
        path = self.work_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def attach(cls, work_dir: Path | str) -> KafkaCluster:
        """The cluster a ``cluster.json`` describes, its nodes' pids included (they may have died since): it can be
        stopped, its nodes killed and started again, its metadata read."""
        work = Path(work_dir).absolute()
        state = json.loads((work / STATE_FILE).read_text())
        self = cls.__new__(cls)
        self.work_dir = work
        self.version = state["version"]
        self.cluster_id = state["cluster_id"]
        self.replication_factor = state["replication_factor"]
        self.min_insync = state["min_insync"]
        self.broker_heap = state["broker_heap"]
        self.controller_heap = state["controller_heap"]
        self.jvm_opts = tuple(state["jvm_opts"])
        self.overrides = dict(state["overrides"])
        self.security = Security(state["security"]) if state.get("security") else None
        self.die_with_parent = False
        self.cds = True
        self._formatted = True
        self._libs = None
        self._archive = None
        self.nodes = {}
        for n in state["nodes"]:
            node = Node(n["node_id"], tuple(n["roles"]), n["port"], n["controller_port"], work / f"node-{n['node_id']}",
                        dict(n.get("secure_ports", {})))  # fmt: skip
            node.pid = n["pid"]
            if not node.running:
                node.pid = None
            self.nodes[node.node_id] = node
        return self


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
