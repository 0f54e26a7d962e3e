"""The code's layout: exporters/, detector/ and stack/ share plumbing only through boxwatch/, and the
detector's modules import without cycles, each on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("exporters", "detector", "stack")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (``TYPE_CHECKING`` blocks left out):
    ``from a.b import c`` counts as ``a.b`` and ``a.b.c`` (c may be a module)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                self.generic_visit(node)
            else:
                for child in node.orelse:
                    self.visit(child)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:  # relative: resolve against the importing module's package
                base = module_name(path).split(".")
                base = base[: len(base) - node.level + (path.name == "__init__.py")]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def test_parts_share_code_only_through_boxwatch():
    crossings = []
    for package in (*PARTS, "boxwatch"):
        others = [p for p in PARTS if p != package]
        for name, path in modules(package).items():
            for target in sorted(imported(path)):
                if target.split(".")[0] in others:
                    crossings.append(f"{name} imports {target}")
    assert crossings == []


def test_the_walk_sees_lazy_imports():
    """The check above would be empty if the walk missed imports inside functions."""
    assert "detector.registry" in imported(ROOT / "detector" / "registry_cli.py")
    assert "boxwatch.log.kv" in imported(ROOT / "exporters" / "server.py")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    known = modules(package)
    return {name: {t for t in imported(path) if t in known and t != name} for name, path in known.items()}


def test_cycles_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_detector_modules_have_no_import_cycle():
    assert cycles(import_graph("detector")) == []


@pytest.mark.slow
def test_each_detector_module_imports_on_its_own():
    """Import every module of detector/ first, in a fresh set of detector modules each time (the
    third-party libraries stay loaded, so this takes seconds, not minutes). ``__main__`` runs the CLI."""
    names = sorted(name for name in modules("detector") if not name.endswith(".__main__"))
    script = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'detector' or m.startswith('detector.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ': ' + traceback.format_exc(limit=1).strip().splitlines()[-1])\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *names], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
