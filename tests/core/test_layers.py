"""No import runs upward between the package's layers (ARCHITECTURE.md draws them)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

#: Bottom to top; a module may import its own layer and the layers below it. The longest matching prefix wins.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "trustml",
        "trustml.errors",
        "trustml.plugin",
        "trustml.atomic_files",
        "trustml.run_lock",
        "trustml.cpu_allocator",
        "trustml.safety",
        "trustml.registry",
        "trustml.config_schema",
        "trustml.run_record",
        "trustml.conf",
    ),
    # fairness.counterfactual is plain text processing (word-pair swaps; imports only trustml.errors): the text
    # data plugin uses it for data.counterfactual, so it sits with the data layer
    ("trustml.losses", "trustml.metrics", "trustml.data", "trustml.models", "trustml.fairness.counterfactual"),
    ("trustml.privacy",),
    ("trustml.optim",),
    ("trustml.methods", "trustml.callbacks", "trustml.knobs"),
    ("trustml.synth", "trustml.federation", "trustml.fairness"),
    ("trustml.runner", "trustml.report"),
    ("trustml.cli", "trustml.privacy.audit"),
)


def layer_of(module: str) -> int:
    """The layer of dotted ``module``: that of the longest prefix listed in :data:`LAYERS`."""
    best, level = "", -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, level = prefix, index
    assert level >= 0, f"{module} is in no layer; add it to LAYERS (and ARCHITECTURE.md)"
    return level


def imports(path: Path) -> set[str]:
    """Every ``trustml`` module ``path`` imports (also inside functions and ``TYPE_CHECKING`` blocks)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "trustml" or name.startswith("trustml.")}


def test_no_import_runs_upward() -> None:
    upward = []
    for path in sorted((REPO_ROOT / "trustml").rglob("*.py")):
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for imported in imports(path):
            if layer_of(imported) > layer_of(module):
                upward.append(f"{module} (layer {layer_of(module)}) imports {imported} (layer {layer_of(imported)})")
    assert not upward, "\n".join(upward)
