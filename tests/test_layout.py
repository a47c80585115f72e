"""The layout the code is held to: which parts may import which (every import, at the top of a
module or inside a function, read from the source with ast)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rnnrbm_cli"


def imports_of(path: Path) -> set[str]:
    """The rnnrbm_cli modules a source file imports, dotted ("rnnrbm_cli.datasets")."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: the package does not use them, and the reader would miss them
                raise AssertionError(f"{path}: a relative import (from {'.' * node.level}{node.module or ''})")
            if node.module:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("rnnrbm_cli")}


# A part's modules: a package, or the module and those split out of it.
PARTS = {"train": ["train", "stages", "selection"], "tune": ["tune", "tune_space", "tune_storage"]}


def files(part: str) -> list[Path]:
    target = PACKAGE / part
    if target.is_dir():
        return sorted(target.rglob("*.py"))
    return [PACKAGE / f"{name}.py" for name in PARTS.get(part, [part])]


# (importer, what it must never import): the whiteboard's "never" arrows.
NEVER = [
    ("train", "rnnrbm_cli.datasets"),  # the loop is handed its data
    ("evaluate", "rnnrbm_cli.datasets"),  # so is the evaluation
    ("tune", "rnnrbm_cli.datasets"),  # and the study
    ("models", "rnnrbm_cli.engines"),  # a model never asks who computes it
    ("models", "rnnrbm_cli.datasets"),
    ("models", "rnnrbm_cli.registry"),
    ("train", "rnnrbm_cli.api"),  # the assembly is above the loop, the evaluation and the study
    ("evaluate", "rnnrbm_cli.api"),
    ("tune", "rnnrbm_cli.api"),
    ("registry", "rnnrbm_cli.models"),  # the data registry knows no model
    ("train", "rnnrbm_cli.cli"),  # the loop knows no terminal
    ("choices", "rnnrbm_cli"),  # the shared names import nothing
]


@pytest.mark.parametrize("importer, forbidden", NEVER)
def test_no_part_imports_what_the_layout_forbids(importer, forbidden):
    for path in files(importer):
        bad = sorted(m for m in imports_of(path) if m == forbidden or m.startswith(forbidden + ".")
                     or (forbidden == "rnnrbm_cli.cli" and m.startswith("rnnrbm_cli.cli")))
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_the_layout_reader_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from rnnrbm_cli.datasets import resolve_data\n")
    assert "rnnrbm_cli.datasets" in imports_of(source)


def _preset_lines(path: Path) -> set[int]:
    """The lines of config.py's PRESETS table (the tutorial preset names its model)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "PRESETS":
            return set(range(node.lineno, node.end_lineno + 1))
    return set()


def test_model_type_names_are_spelled_only_in_the_models_and_the_presets():
    allowed = {"config.py": _preset_lines(PACKAGE / "config.py")}
    assert allowed["config.py"], "config.PRESETS not found"
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("models/"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if ("rnn-rbm" in line or "rnn-nade" in line) and n not in allowed.get(rel, set()):
                raise AssertionError(f"{rel}:{n} names a model type: {line.strip()}")
