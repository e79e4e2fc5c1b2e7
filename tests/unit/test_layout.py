"""README's layout table is the package: every module listed once, and imports point down the list."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "daemon"
PURE_FORBIDDEN = ("aiohttp", "aiokafka")


def _layout() -> list[tuple[str, bool]]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Layout") :]
    return [(m[0], bool(m[1])) for m in re.findall(r"^\| `([a-z_]+)(?:\.py|/)` \| (\*pure\*)?", section, re.M)]


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_every_module_is_listed_once() -> None:
    listed = [name for name, _ in _layout()]
    assert len(listed) == len(set(listed))
    present = {_module(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert set(listed) == present


def test_imports_point_down_the_list_and_pure_modules_stay_pure() -> None:
    layout = _layout()
    position = {name: i for i, (name, _) in enumerate(layout)}
    pure = {name for name, is_pure in layout if is_pure}
    upward: list[str] = []
    impure: list[str] = []
    for path in PACKAGE.rglob("*.py"):
        module = _module(path)
        if module == "__init__":
            continue
        for imported in _imports(path):
            parts = imported.split(".")
            inside = parts[0] == "daemon" and len(parts) > 1 and parts[1] != module and parts[1] in position
            if inside and position[parts[1]] <= position[module]:
                upward.append(f"{path.relative_to(ROOT)} imports {imported}")
            if module in pure and parts[0] in PURE_FORBIDDEN:
                impure.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert upward == []
    assert impure == []
