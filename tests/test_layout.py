"""The package's layout: no import cycles (lazy imports included), a small top level, and a
``dynamics/`` that stays pure torch and knows models only through their shared interface."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "resnet_dyn"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules a file imports anywhere in it (functions included): for
    ``from a.b import c`` the module ``a.b.c`` when it exists, else ``a.b``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            names = [n for n in names[:-1] if n in known] or [node.module]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_any_two_files() -> None:
    graph = import_graph()
    assert "resnet_dyn.report.sweep" in graph["resnet_dyn.report.figures"]  # the parser works
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_lazy_cycle() -> None:
    graph = import_graph()
    graph["resnet_dyn.files"] = graph["resnet_dyn.files"] | {"resnet_dyn.report.build"}
    assert any("resnet_dyn.files" in c for c in cycles(graph))


def test_at_most_five_files_at_the_top_level() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 5, top


def test_data_flows_one_way_between_the_packages() -> None:
    """config -> models, data -> training -> analysis -> report; the commands on top."""
    after = {  # packages that a package must not import
        "dynamics": {"training", "analysis", "report", "plots", "cli", "config", "data", "logs"},
        "models": {"training", "analysis", "report", "plots", "cli", "dynamics", "data"},
        "data": {"training", "analysis", "report", "plots", "cli", "dynamics", "models"},
        "plots": {"training", "analysis", "report", "cli"},
        "analysis": {"training", "report", "cli"},
        "training": {"report", "cli"},
        "report": {"training", "analysis", "cli"},
        "logs": {"training", "analysis", "report", "cli"},
    }
    wrong = [
        (src, dst)
        for src, dsts in import_graph().items()
        for dst in dsts
        if src.split(".")[1] in after and dst.split(".")[1] in after[src.split(".")[1]]
    ]
    assert wrong == []


def test_dynamics_imports_no_framework_and_no_concrete_model() -> None:
    code = (
        "import sys, resnet_dyn.dynamics\n"
        "heavy = ('lightning', 'hydra', 'omegaconf', 'wandb', 'matplotlib')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"
    # Models only through the shared interface (resnet_dyn.models.base), never a concrete class.
    concrete = {"resnet_dyn.models.cifar_resnet", "resnet_dyn.models.dense"}
    graph = import_graph()
    assert not [m for m in graph if m.startswith("resnet_dyn.dynamics") and graph[m] & concrete]
