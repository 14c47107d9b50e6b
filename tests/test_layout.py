"""The folders are the architecture: every import points down the layers, and no module imports
itself back through others (lazy imports inside functions count: they are imports all the same)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "compatret"

# lowest first; a module may import its own layer (without a cycle) and any layer below it
LAYERS: list[tuple[str, ...]] = [
    ("core",),  # errors, lineage and Compat rules, the contract (`resolve`), transforms, paths, digests
    ("data", "models"),  # item/BEIR/image readers; heads and losses
    ("encoders", "store", "evaluation"),  # models that embed; the Lance gallery; metrics
    ("search",),  # kernels and the per-fragment view of a gallery
    ("adapt", "engine"),  # fitting maps from a gallery's rows; the gallery object users hold
    ("train",),  # image and text training (text mines negatives through the engine)
    ("api", "trainers"),  # the public API: one Index over a gallery or a sharded one; training as functions
    ("server", "integrations"),  # FastAPI over the API; LangChain and LlamaIndex stores over it
    ("cli",),  # click, and the quickstart
    ("testing",),  # helpers for tests and benchmarks, never imported by the package
]
DOORS = {"compatret", "compatret.__main__"}  # the package's public names and `python -m compatret`
MAX_LINES = 400


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """compatret modules a file imports anywhere in it (top level, functions, TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("compatret"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("compatret"))
    return found


def graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}


def layer(module: str) -> int:
    top = module.split(".")[1]
    for n, names in enumerate(LAYERS):
        if top in names:
            return n
    raise AssertionError(f"{module}: its folder {top!r} is in no layer (add it to LAYERS, and say why there)")


def test_every_import_points_down_the_layers():
    upward = [
        f"{m} (layer {layer(m)}) imports {i} (layer {layer(i)})"
        for m, deps in graph().items()
        if m not in DOORS
        for i in deps
        if i not in DOORS and layer(i) > layer(m)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_the_import_graph_has_no_cycle():
    g = {m: {d for d in deps if d not in DOORS and not g_is_package(d)} for m, deps in graph().items() if m not in DOORS}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycles.append(path[path.index(d) :] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def g_is_package(module: str) -> bool:
    """A package's __init__ re-exports its modules: importing it is importing them (not a cycle of its own)."""
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


def test_no_module_grows_past_a_screenful_of_screens():
    long = {_module(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"

