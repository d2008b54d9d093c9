"""The engine's sub-packages keep the import order docs/engine.md states, so no import circle can form:
``io`` imports no other sub-package, ``model`` only ``io``, ``training`` and ``evaluation`` only ``model`` and
``io``, and ``d2`` any; the top-level utilities (cli, console, progress, distributed) import at most ``io``."""
import ast
import os

import pytest

ENGINE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "snnet_core")
ALLOWED = {
    "io": {"io"},
    "model": {"io", "model"},
    "training": {"io", "model", "training"},
    "evaluation": {"io", "model", "evaluation"},
    "d2": {"io", "model", "training", "evaluation", "d2"},
}
UTILITIES = ("cli", "console", "progress", "distributed")
SUBPACKAGES = set(ALLOWED)


def engine_imports(path: str) -> set:
    """The first component after ``snnet_core.`` of every module ``path`` imports (absolute imports only)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "snnet_core" and len(parts) > 1:
                names.add(parts[1])
    return names


def modules_of(package: str) -> list:
    folder = os.path.join(ENGINE, package)
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_subpackage_imports_only_those_before_it(package):
    for path in modules_of(package):
        wrong = (engine_imports(path) & SUBPACKAGES) - ALLOWED[package]
        assert not wrong, f"{os.path.relpath(path, ENGINE)} imports snnet_core.{sorted(wrong)}"


@pytest.mark.parametrize("name", UTILITIES)
def test_a_top_level_utility_imports_at_most_io(name):
    imported = engine_imports(os.path.join(ENGINE, f"{name}.py"))
    assert imported <= {"io"} | set(UTILITIES), f"snnet_core/{name}.py imports snnet_core.{sorted(imported)}"


def test_the_checker_sees_imports():
    """The checker is not blind: the model package's modules do import io, and d2's import the others."""
    seen = set().union(*(engine_imports(p) for p in modules_of("d2")))
    assert {"model", "evaluation", "training"} <= seen
    assert "io" in set().union(*(engine_imports(p) for p in modules_of("model")))
