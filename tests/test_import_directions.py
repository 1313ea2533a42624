"""The folder tree is the architecture: each package imports only what its docstring allows, nothing
imports in a cycle, the backends never import the engine, and tests and benchmarks share helpers only
through tests/helpers.py. Read from the source (ast), so lazy imports inside functions count too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "export", "calibration", "firmware_bridge", "tests", "benchmarks")

# package -> the packages it may import from (itself always). The most specific package of a
# module decides; "edge" alone is the public API in edge/__init__.py.
ALLOWED = {
    "edge.runtime": {"calibration"},
    "edge.synthetic": {"edge.runtime"},
    "edge.counting": {"edge.runtime", "edge.synthetic", "firmware_bridge", "calibration"},
    "edge.review": {"edge.runtime", "edge.counting", "calibration"},
    "edge.evaluation": {"edge.runtime", "edge.counting", "edge.review", "edge.synthetic", "calibration"},
    "edge.bench": {"edge", "edge.runtime", "edge.counting", "edge.synthetic"},
    "edge": {"edge.runtime", "edge.counting"},
    # the command line wires every tool; `edge export` hands over to export.cli lazily
    "edge.cli": {"edge", "edge.runtime", "edge.counting", "edge.synthetic", "edge.review", "edge.evaluation",
                 "edge.bench", "firmware_bridge", "calibration", "export.cli"},
    "calibration": set(),
    "firmware_bridge": set(),
    "export": {"edge", "edge.runtime", "edge.synthetic", "edge.evaluation", "calibration"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[tuple[str, str]]:
    """(imported module, imported name or '') for every import of a project module in `path`."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name, "") for alias in node.names if alias.name.split(".")[0] in PACKAGES}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add((full, "") if full in known else (base, alias.name))
    return found


GRAPH = {name: imports_of(name, path, set(modules())) for name, path in modules().items()}


def owner(module: str) -> str:
    """The most specific package of ALLOWED that holds `module`."""
    candidates = [p for p in ALLOWED if module == p or module.startswith(p + ".")]
    return max(candidates, key=len) if candidates else module.split(".")[0]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_it_may(package):
    wrong = sorted((module, target) for module, targets in GRAPH.items() if owner(module) == package
                   for target, _ in targets
                   if owner(target) != package and owner(target) not in ALLOWED[package]
                   and target not in ALLOWED[package])
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])}: {wrong}"


def test_no_module_imports_in_a_cycle():
    edges = {m: {t for t, _ in targets if t in GRAPH} for m, targets in GRAPH.items()}
    done, on_path, cycles = set(), [], []

    def visit(module: str) -> None:
        if module in on_path:
            cycles.append(on_path[on_path.index(module):] + [module])
            return
        if module in done:
            return
        on_path.append(module)
        for target in sorted(edges[module]):
            visit(target)
        on_path.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)
    assert not cycles, cycles


def test_backends_never_import_the_engine():
    wrong = [m for m, targets in GRAPH.items() if m.startswith("edge.runtime.backends")
             for t, _ in targets if t == "edge.runtime.engine"]
    assert not wrong


def test_tests_and_benchmarks_share_only_the_helpers_module():
    """Neither reads another test module's (or a benchmark's) helpers: shared ones live in tests/helpers.py."""
    wrong = [(m, t) for m, targets in GRAPH.items() if m.split(".")[0] in ("tests", "benchmarks")
             for t, _ in targets if t.startswith("tests.") and t != "tests.helpers"
             or t.startswith("benchmarks") and m.startswith("tests")]
    assert not wrong, wrong


def test_the_runtime_never_imports_torch_timm_or_the_export_stage():
    heavy = ("torch", "timm", "torchvision", "export")
    wrong = []
    for name, path in modules().items():
        if owner(name) == "edge.cli" or not name.startswith("edge"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            wrong += [(name, n) for n in names if n.split(".")[0] in heavy]
    assert not wrong, wrong
