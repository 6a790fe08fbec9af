"""The layer contracts of pyproject.toml (``[tool.importlinter]``), checked by ``lint-imports``: a module imports
only from its own layer or the layers below it, and ``paka_hf.training.config`` from no other training module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    """Run the repository's contracts on the ``paka_hf`` found under ``package_parent``."""
    env = dict(os.environ, PYTHONPATH=str(package_parent))
    return subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=package_parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_imports_point_down_the_layers():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    # The same contracts on a copy of the package where the bottom layer imports the top one, and the
    # configuration imports the trainer: both contracts must report it.
    shutil.copytree(ROOT / "paka_hf", tmp_path / "paka_hf", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "paka_hf" / "utils" / "errors.py", "a") as f:
        f.write("\nimport paka_hf.commands.cli  # noqa: E402\n")
    with open(tmp_path / "paka_hf" / "training" / "config.py", "a") as f:
        f.write("\nimport paka_hf.training.trainer  # noqa: E402\n")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Contracts: 0 kept, 2 broken." in result.stdout
    assert "paka_hf.utils.errors -> paka_hf.commands.cli" in result.stdout
    assert "paka_hf.training.config -> paka_hf.training.trainer" in result.stdout
