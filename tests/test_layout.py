"""The layout shows the architecture: no import cycles, and no library module imports a command."""
import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = {"recon.fit", "recon.evaluate", "recon.export", "recon.finetune", "recon.cache"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_at_load(path: Path, modules: set[str]) -> set[str]:
    """The recon / solvers modules that loading ``path`` imports (module level, outside TYPE_CHECKING)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def graph() -> dict[str, set[str]]:
    files = [p for folder in ("recon", "solvers") for p in (ROOT / folder).rglob("*.py")]
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_at_load(p, modules) - {module_name(p)} for p in files}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            assert state.get(target) != 1, "import cycle: " + " -> ".join(path + [target])
            if target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_no_library_module_imports_a_command_and_solvers_import_no_torch():
    for name, targets in graph().items():
        if not name.startswith("recon.cli") and name not in ENTRY_POINTS:
            assert not any(t.startswith("recon.cli") for t in targets), f"{name} imports {targets}"
        if name.startswith("solvers"):
            assert not any(t.startswith("recon") for t in targets), f"{name} imports {targets}"
    for path in (ROOT / "solvers").rglob("*.py"):
        assert "import torch" not in path.read_text(), path


# Packages by level: a module may import its own level and the levels below, never above.
LEVELS = [
    {"recon", "recon.version", "recon.errors", "recon.checks", "solvers"},
    {"recon.nn"},
    {"recon.methods"},
    {"recon.inputs"},
    {"recon.record", "recon.folding", "recon.data", "recon.metrics", "recon.model_checks"},
    {"recon.io", "recon.bench"},
    {"recon.surgery", "recon.zoo"},
    {"recon.pipeline"},
    {"recon.cli"},
    ENTRY_POINTS,
]


def level(module: str) -> int:
    """The level of ``module``: that of its package (``recon.X``), or of the module itself."""
    parts = module.split(".")
    for name in (".".join(parts[:2]), parts[0] if parts[0] == "solvers" else module):
        for index, members in enumerate(LEVELS):
            if name in members:
                return index
    raise AssertionError(f"{module} has no level in tests/test_layout.py LEVELS: place it there")


def test_no_module_imports_a_package_above_its_own():
    upward = [f"{name} -> {target}" for name, targets in graph().items() for target in targets
              if level(target) > level(name)]
    assert not upward, "upward imports: " + "; ".join(sorted(upward))


# The tests of solvers/ alone: they, tests/conftest.py and tests/helpers.py must run with torch not installed.
SOLVER_TESTS = ["tests/test_scheme1.py", "tests/test_scheme2.py", "tests/test_parallel.py"]
# Its work runs in child processes, out of the block's reach; collecting the file still checks its imports.
OUT_OF_REACH = ["tests/test_parallel.py::test_sharded_equals_single_device"]
WITHOUT_TORCH = textwrap.dedent("""
    import sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"the tests of solvers/ must not import {name}")

    sys.meta_path.insert(0, NoTorch())
    import pytest
    sys.exit(pytest.main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_solver_tests_pass_with_torch_not_importable():
    deselect = [arg for test in OUT_OF_REACH for arg in ("--deselect", test)]
    run = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *SOLVER_TESTS, *deselect, "-q", "-o", "addopts=",
                          "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, f"solver tests fail without torch:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"
