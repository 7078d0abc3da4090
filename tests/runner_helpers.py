"""Helpers for runner tests: scratch runbooks, the real command line, planted secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from casera.secrets import SECRET_SPECS

REPO = Path(__file__).resolve().parents[1]
PLANTED = {spec.env_var: f"planted-{spec.name}-Zq8#v1&x" for spec in SECRET_SPECS}

PARAMETERS = """env = "local"
dry_run = False
approve = False
interactive = True
run_id = "interactive"
overrides = {}"""
START = """from casera.context import start_run
ctx = start_run(env, dry_run=dry_run, approve=approve, interactive=interactive, run_id=run_id,
                overrides=overrides)"""


def write_runbook(directory: Path, name: str, steps: list[tuple[str, str]],
                  extra_parameters: str = "") -> Path:
    """A runbook shaped like the real ones: parameters cell, start cell, then steps."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    params = new_code_cell(PARAMETERS + ("\n" + extra_parameters if extra_parameters else ""))
    params.metadata["tags"] = ["parameters"]
    nb.cells += [new_markdown_cell(f"# {name}"), params,
                 new_markdown_cell("## 1. Start the run"), new_code_cell(START)]
    for heading, code in steps:
        nb.cells += [new_markdown_cell(f"## {heading}\nWhy and how to undo."), new_code_cell(code)]
    path = directory / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def casera(*args: str, timeout: float = 300, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    """The real command line, as an operator or CI runs it."""
    return subprocess.run([sys.executable, "-m", "casera.runner.cli", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=env or dict(os.environ))


def outputs(root: Path, env: str, runbook: str) -> list[Path]:
    return sorted((root / "outputs" / env / runbook).glob("*.ipynb"))


def assert_no_planted_secret(path: Path) -> None:
    text = path.read_text()
    for var, value in PLANTED.items():
        assert value not in text, f"{var}'s planted value leaked into {path}"
