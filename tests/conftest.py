"""Shared fixtures: a scratch copy of the project, so runner tests never touch the real
outputs/ or secrets/, and planted secrets whose values must never appear in any output."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from runner_helpers import PLANTED, REPO


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch checkout: params/ and runbooks/ copied, a git commit, planted secrets."""
    root = tmp_path / "project"
    shutil.copytree(REPO / "params", root / "params")
    shutil.copytree(REPO / "runbooks", root / "runbooks",
                    ignore=shutil.ignore_patterns("conftest.py", "__pycache__", ".ipynb*"))
    (root / "outputs").mkdir()
    (root / "secrets").mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.email=t@t", "-c", "user.name=t",
                    "commit", "-qm", "scratch"], check=True)
    monkeypatch.setenv("CASERA_PROJECT_DIR", str(root))
    monkeypatch.setenv("CASERA_OPERATOR", "test-operator")
    for var, value in PLANTED.items():
        monkeypatch.setenv(var, value)
    return root
