"""The package's shape: imports flow one way (no cycle, lazy imports included), each
subpackage imports only what its `__init__` docstring allows, and no runtime module
needs test-only libraries at import time."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "limubert_jax"
SUBPACKAGES = ("runtime", "data", "models", "io", "export", "pretraining", "downstream")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for limubert_jax and the builders installed as limubert_jax.datasets."""
    found = {}
    for base, prefix in ((PACKAGE, ("limubert_jax",)), (ROOT / "datasets", ("limubert_jax", "datasets"))):
        for path in base.rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(prefix + parts)] = path
    return found


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The module `name` refers to: itself, or the package holding the imported attribute."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """The package modules `module` imports, at top level or inside functions."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            owner = _owner(name) if name.split(".")[0] == "limubert_jax" else None
            # A module importing its own package's names (its parent __init__) is not an edge.
            if owner and owner != module and not module.startswith(owner + "."):
                targets.add(owner)
    return targets


GRAPH = {module: imports_of(module) for module in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def allowed_imports(subpackage: str) -> set[str]:
    """The subpackages named on the 'May import:' line of `subpackage`'s docstring."""
    doc = ast.get_docstring(ast.parse((PACKAGE / subpackage / "__init__.py").read_text())) or ""
    match = re.search(r"^May import: (.*)$", doc, re.M)
    assert match, f"limubert_jax/{subpackage}/__init__.py: the docstring lacks a 'May import: ...' line"
    return set(re.findall(r"\b[a-z_]+\b", match.group(1))) & set(SUBPACKAGES)


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_subpackage_imports_only_what_its_docstring_allows(subpackage):
    allowed = allowed_imports(subpackage) | {subpackage}
    prefix = f"limubert_jax.{subpackage}"
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items() if module == prefix or module.startswith(prefix + ".")
        for target in targets
        if target.split(".")[1] not in allowed and not target.startswith("limubert_jax.datasets")
    )
    assert not wrong, f"{subpackage} may import {sorted(allowed)} only: " + "; ".join(wrong)


def test_the_layers_are_ordered():
    # Each subpackage may import only ones before it in SUBPACKAGES: one direction, by construction.
    for i, subpackage in enumerate(SUBPACKAGES):
        assert allowed_imports(subpackage) <= set(SUBPACKAGES[:i]), subpackage


def test_top_level_holds_commands_and_the_registry_only():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert top == ["config_lib", "convert", "demo", "embed", "fetch", "main", "predict", "prepare_data", "tasks"]
    assert sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()) == sorted(SUBPACKAGES)


# The PyTorch file users copy into their projects: torch is what it is for (tests/test_torch_pipeline.py
# checks that it imports nothing but torch and the standard library).
STANDALONE_TORCH = "limubert_jax.export.limubert_torch"


def test_no_runtime_module_imports_torch_or_test_code_at_import_time():
    offenders = []
    for module, path in MODULES.items():
        if module.startswith("limubert_jax.datasets") or module == STANDALONE_TORCH:
            continue
        for node in ast.parse(path.read_text()).body:  # top-level statements only
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{module}: {n}" for n in names if n.split(".")[0] in {"torch", "pytest", "scipy"}]
    assert not offenders, offenders


def test_the_main_job_and_its_metrics_writer_do_not_import_torch(tmp_path):
    """torch (an optional extra) costs seconds of start-up; tensorboardX imports it when it
    can, so the metrics writer keeps it out, and leaves `import torch` working afterwards."""
    script = (
        "import sys\n"
        "from etils import epath\n"
        "import limubert_jax.main\n"
        "from limubert_jax.pretraining import metrics\n"
        "writer = metrics.MetricsWriter(epath.Path(sys.argv[1]))\n"
        "writer.write({'step': 1, 'epoch': 1, 'train_loss': 0.5})\n"
        "writer.close()\n"
        "print('torch' in sys.modules, sys.modules.get('torch', 0) is None)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", "False"]
    assert len(list((tmp_path / "tensorboard").iterdir())) == 1  # the events file
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
