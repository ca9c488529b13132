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
    assert "2 kept, 0 broken" in result.stdout


def copy_of_the_packages(root: Path) -> Path:
    for name in ("erasure", "eval", "pipelines"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_a_climbing_import_breaks_the_contract(tmp_path):
    """The contract can fail: the world importing the evaluation library is caught."""
    root = copy_of_the_packages(tmp_path)
    world = root / "erasure" / "canvas" / "render.py"
    world.write_text(world.read_text() + "\nfrom eval.metrics import frechet_distance  # climbs\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "erasure.canvas.render -> eval.metrics" in result.stdout


def test_the_evaluation_library_importing_a_method_breaks_the_contract(tmp_path):
    """Downward, but forbidden: the evaluation scores plain pipelines, whichever toolkit made them."""
    root = copy_of_the_packages(tmp_path)
    attacks = root / "eval" / "attacks" / "base.py"
    attacks.write_text(attacks.read_text() + "\nfrom erasure.methods import METHODS  # forbidden\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "the evaluation library never imports the engine or a method BROKEN" in result.stdout
