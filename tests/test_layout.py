"""The package's shape: layers import downward only, no import cycles, modules of a readable size.

Layers, lowest first (a module may import its own layer and those below it):
errors, utils, assets / presets, core, networks, data, teachers, student, evaluation, distill,
export, app (evaluation sits below distill: the trainer scores its student while it trains).
``__main__`` modules are entry points and may import the app. Imports inside functions and
under ``TYPE_CHECKING`` count too: a lazy import still ties two layers together.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import fewstep

ROOT = Path(fewstep.__file__).resolve().parent
LAYERS = ["errors", "utils", "assets", "presets", "core", "networks", "data", "teachers",
          "student", "evaluation", "distill", "export", "app"]
RANK = {"assets": 1, "presets": 1}
MAX_LINES = 400
#: modules still over MAX_LINES, each with the issue that splits it
OVER_LIMIT: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(path: Path, module: str) -> set[str]:
    """Every fewstep module ``path`` imports (top level, in functions, under TYPE_CHECKING)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fewstep"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: None if is_pkg else -1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("fewstep"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _rank(layer: str) -> int:
    return RANK.get(layer, LAYERS.index(layer))


def test_layers_import_downward_only() -> None:
    mods = _modules()
    upward = []
    for name, path in mods.items():
        src = _layer(name)
        if src is None or name.endswith("__main__"):
            continue
        for target in _imports(path, name):
            dst = _layer(target)
            if dst is not None and dst != src and _rank(dst) > _rank(src):
                upward.append(f"{name} -> {target}")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        if name.endswith("__main__"):
            continue
        for target in _imports(path, name):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(mods):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_modules_stay_readable() -> None:
    long = {}
    for path in ROOT.rglob("*.py"):
        rel = str(path.relative_to(ROOT.parent))
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES and rel not in OVER_LIMIT:
            long[rel] = n
    assert not long, f"modules over {MAX_LINES} lines: {long}"
