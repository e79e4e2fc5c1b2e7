"""The package's plan, held to the code: its packages are layers, imports point down them, the pure core stays pure,
nothing imports in a circle, and aiokafka's and aiohttp's insides are touched through one door each.

The layers, top first (``docs/development.md`` draws them); a module imports modules of its own package and of the
layers below its own, never a sibling of its layer nor anything above:

    __main__, cli        the command
    tools                operator tools: the admin client, tail/stats, the demo, the embedded broker
    app                  the lifecycle
    admin                both HTTP surfaces (one layer, ``admin.web``) and the operator actions
    engine               the settlement, the routing, endpoint health
    schema_registry      the Schema Registry's client and the loader of writer schemas
    delivery | kafka     one attempt over HTTP | every Kafka client, topic and read-back
    observe              metrics, logs, systemd, tracing
    core                 pure: config and its validation, the values, the contracts, matching, signing, policy
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "daemon"
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(names)
    for names in (
        ("__main__",),
        ("cli",),
        ("tools",),
        ("app",),
        ("admin",),
        ("engine",),
        ("schema_registry",),
        ("delivery", "kafka"),
        ("observe",),
        ("core",),
    )
)
PURE = "core"
PURE_FORBIDDEN = ("aiohttp", "aiokafka")
# The one module each outside library's insides are reached through; each lists what it relies on, with its tests.
DOORS = {
    "aiokafka": "daemon/kafka/clients.py",
    "aiohttp": "daemon/delivery/http.py",
    "aiohttp.web": "daemon/admin/web.py",
    "prometheus_client": "daemon/observe/metrics.py",
}
# Names under which another library's object is held where its private attributes are read (not our own objects).
_OWN_RECEIVERS = ("self", "cls", "super()")
_PUBLIC_DESPITE_THE_UNDERSCORE = ("os._exit",)


def _layer(unit: str) -> int:
    for i, names in enumerate(LAYERS):
        if unit in names:
            return i
    raise AssertionError(f"daemon/{unit} is in no layer of LAYERS: add it")


def _unit(path: Path) -> str:
    """The package (or top-level module) a file belongs to: ``daemon/kafka/consume.py`` -> ``kafka``."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _dotted(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_dotted(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _targets(path: Path, modules: dict[str, Path]) -> set[str]:
    """The daemon modules a file imports (``from daemon.core import model`` counts as ``daemon.core.model``)."""
    return {name for name in _imports(path) if name in modules and name != _dotted(path)}


def test_every_package_is_a_layer_and_imports_point_down() -> None:
    upward: list[str] = []
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(path)
        if unit == "__init__":
            continue
        for imported in _imports(path):
            parts = imported.split(".")
            if parts[0] != "daemon" or len(parts) < 2 or parts[1] == unit or parts[1] == "__init__":
                continue
            if not (PACKAGE / parts[1]).exists() and not (PACKAGE / f"{parts[1]}.py").exists():
                continue
            if _layer(parts[1]) <= _layer(unit):
                upward.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert upward == []


def test_the_core_is_pure() -> None:
    impure = [
        f"{path.relative_to(ROOT)} imports {imported}"
        for path in (PACKAGE / PURE).rglob("*.py")
        for imported in _imports(path)
        if imported.split(".")[0] in PURE_FORBIDDEN
    ]
    assert impure == []


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _targets(path, modules) for name, path in modules.items()}
    # A package's __init__ is its face: importing daemon.x.y also runs daemon.x, which may import daemon.x.y back.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    cycles: list[str] = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def _private_reads(path: Path) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls``: another object's insides (our own classes keep none open)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            receiver = ast.unparse(node.value)
            if receiver not in _OWN_RECEIVERS and f"{receiver}.{node.attr}" not in _PUBLIC_DESPITE_THE_UNDERSCORE:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {receiver}.{node.attr}")
    return found


def test_other_libraries_insides_are_read_in_their_door_only() -> None:
    doors = {ROOT / p for p in DOORS.values()}
    outside = [read for path in PACKAGE.rglob("*.py") if path not in doors for read in _private_reads(path)]
    assert outside == []


def test_aiokafka_clients_are_built_in_one_module() -> None:
    built: list[str] = []
    for path in PACKAGE.rglob("*.py"):
        if path == ROOT / DOORS["aiokafka"]:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("AIOKafka"):
                built.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.id}(")
    assert built == []


def test_each_door_names_the_insides_it_reads_and_their_tests() -> None:
    """A door's docstring lists every private attribute it reads, so an upgrade knows what to check."""
    missing: list[str] = []
    for path in {ROOT / p for p in DOORS.values()}:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        for read in _private_reads(path):
            attribute = read.rsplit(".", 1)[1]
            if not re.search(rf"(?<![A-Za-z0-9_]){re.escape(attribute)}(?![A-Za-z0-9_])", doc):
                missing.append(f"{read} (not named in the module's docstring)")
        if "tests/" not in doc:
            missing.append(f"{path.relative_to(ROOT)}: its docstring names no test")
    assert missing == []


def test_tests_mirror_the_packages() -> None:
    """Unit tests live in tests/unit/<package>/ for the package they test (the deploy kit and this file at the top)."""
    unit = ROOT / "tests" / "unit"
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    folders = {p.name for p in unit.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= packages, f"test folders without a package: {sorted(folders - packages)}"
    loose = sorted(
        p.name for p in unit.glob("test_*.py") if p.name not in ("test_layout.py", "test_deploy.py", "test_docs.py")
    )
    assert loose == []


def test_the_lifecycle_is_lifecycle_only() -> None:
    """Start-up, the main loop, shutdown: what grows beyond belongs in a module of its own."""
    assert len((PACKAGE / "app" / "lifecycle.py").read_text(encoding="utf-8").splitlines()) < 400
