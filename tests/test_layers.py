"""Imports run downhill (docs: entry points → training → tasks/evaluation → models → kernels/attention; data, store
and report beside): every import of every module, lazy ones inside functions included, read from the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "kernel_attention"

# package (or module) → what it must never import
FORBIDDEN = {
    "store": ("training", "evaluation", "tasks", "report", "cli", "models", "data"),
    "data": ("training", "evaluation", "tasks", "report", "models", "cli"),
    "models": ("training", "evaluation", "tasks", "report", "data", "cli"),
    "tasks": ("training", "report", "cli", "evaluation.evaluate"),
    "evaluation.bleu": ("training", "tasks", "report", "cli", "evaluation.evaluate"),
    "evaluation.generate": ("training", "tasks", "report", "cli", "evaluation.evaluate"),
    "evaluation.lm": ("training", "tasks", "report", "cli", "evaluation.evaluate"),
    "evaluation.options": ("training", "tasks", "report", "cli", "evaluation.evaluate"),
    "evaluation.evaluate": ("training", "report", "cli"),
    "report": ("training", "tasks", "models", "data", "evaluation.evaluate", "diagnostics", "cli"),
    "diagnostics": ("training", "report", "cli"),
}


def _imports(path: Path) -> set[str]:
    """``kernel_attention.*`` modules imported anywhere in ``path``, without the package prefix."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n.removeprefix("kernel_attention.") for n in names if n.startswith("kernel_attention.")}
    return out


def _modules(prefix: str) -> list[Path]:
    path = PKG / prefix.replace(".", "/")
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_run_downhill(layer: str) -> None:
    bad = []
    for path in _modules(layer):
        for name in _imports(path):
            hit = [f for f in FORBIDDEN[layer] if name == f or name.startswith(f + ".")]
            if hit:
                bad.append(f"{path.relative_to(PKG)} imports kernel_attention.{name}")
    assert not bad, bad


def test_the_rule_sees_lazy_imports(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def f():\n    from kernel_attention.training import loop\n")
    assert "training" in _imports(tmp_path / "m.py")
