"""The layering is a test: commands > evaluation library > engine > methods > pipelines > world (pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` (import-linter's command; the test extra installs it) run in `root`, on the packages there.

    Without import-linter this fails rather than skips: the layering must be checked wherever the tests run.
    """
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    command = [sys.executable, "-c", code, "--no-cache"]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120, check=False)


def test_every_import_runs_downwards():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_a_climbing_import_breaks_the_contract(tmp_path):
    """The contract can fail: the world importing the evaluation library is caught."""
    for name in ("erasure", "eval", "pipelines"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    world = tmp_path / "erasure" / "canvas" / "render.py"
    world.write_text(world.read_text() + "\nfrom eval.metrics import frechet_distance  # climbs\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "erasure.canvas.render -> eval.metrics" in result.stdout
