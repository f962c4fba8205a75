"""The shape of the code: imports point down (app → engine → assets; models → engine's shared types only),
no import cycles, torch stays out of the engine's import time, one import style.

Read from the source with ``ast``, so every import counts, also those inside functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"app": "quietlens.app", "engine": "quietlens.engine", "models": "quietlens.models"}
# What models/ may use of the engine: its shared types and numerical building blocks, never the methods,
# the pipeline, the GUI-facing session, batch or command line.
ENGINE_SHARED = ("catalogue", "errors", "image", "progress", "tiling", "noise")


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((package, *parts[:-1]) if parts[-1] == "__init__" else (package, *parts))
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, bool, int, bool]]:
    """(imported quietlens module, at module level?, line, written relative?) for each import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(n) for n in tree.body} | {id(n) for s in tree.body if isinstance(s, (ast.If, ast.Try))
                                            for n in ast.walk(s)}
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        relative = False
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            relative = node.level > 0
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if relative else []
            module = ".".join(base + ([node.module] if node.module else []))
            # ``from pkg import name``: name may be a submodule
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
        for t in targets:
            if t.startswith("quietlens."):
                while t not in MODULES and "." in t:  # a name inside a module: the module itself
                    t = t.rpartition(".")[0]
                out.append((t, id(node) in top_level, node.lineno, relative))
    return out


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _where(name: str, line: int) -> str:
    return f"{MODULES[name].relative_to(REPO)}:{line}"


def test_the_engine_never_imports_the_app():
    bad = [f"{_where(m, line)} imports {t}" for m, found in IMPORTS.items() if m.startswith("quietlens.engine")
           for t, _, line, _ in found if t.startswith("quietlens.app")]
    assert not bad, bad


def test_models_use_only_the_engines_shared_types():
    allowed = tuple(f"quietlens.engine.{s}" for s in ENGINE_SHARED)
    bad = [f"{_where(m, line)} imports {t}" for m, found in IMPORTS.items() if m.startswith("quietlens.models")
           for t, _, line, _ in found
           if t.startswith("quietlens.app") or (t.startswith("quietlens.engine")
                                                and not t.startswith(allowed) and t != "quietlens.engine")]
    assert not bad, bad


def test_the_engine_imports_models_and_torch_only_inside_functions():
    """torch and the training code load when fitting or training needs them, never to run a graph."""
    bad = [f"{_where(m, line)} imports {t} at module level" for m, found in IMPORTS.items()
           if m.startswith("quietlens.engine") for t, top, line, _ in found if top and t.startswith("quietlens.models")]
    for name, path in MODULES.items():
        if name.startswith(("quietlens.engine", "quietlens.app")):
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    bad += [f"{_where(name, node.lineno)} imports {m}" for m in mods if m.split(".")[0] == "torch"]
    assert not bad, bad


def test_one_import_style():
    """Relative imports within a top-level package, ``quietlens.…`` across packages."""
    bad = []
    for m, found in IMPORTS.items():
        own = ".".join(m.split(".")[:2])
        for t, _, line, relative in found:
            crosses = not t.startswith(own + ".") and t != own
            if relative == crosses:
                bad.append(f"{_where(m, line)} imports {t} {'relatively' if relative else 'absolutely'}")
    assert not bad, bad


def test_no_import_cycles_at_import_time():
    graph = {m: {t for t, top, _, _ in found if top and t != m} for m, found in IMPORTS.items()}
    # A package's __init__ runs before its submodules: importing pkg.sub also imports pkg.
    cycles = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


@pytest.mark.parametrize("folder", list(PACKAGES))
def test_every_module_is_seen(folder):
    assert any(name.startswith(PACKAGES[folder]) for name in MODULES)
