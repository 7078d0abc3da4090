"""Helpers for runner tests: scratch checkouts, scratch runbooks, the real command line,
planted secrets, and a private Hetzner emulator (the env lock lives in Hetzner)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
from hcloud import Client
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from casera.operator_secrets import SECRET_SPECS

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


@contextmanager
def hetzner_emulator() -> Iterator[str]:
    """The local Hetzner API (in memory, fake nodes) on a free port, accepting the planted
    token; yields its URL. The runner's subprocesses and kernels reach it over TCP."""
    from casera_localcloud.hetzner.fake_backend import FakeNodeBackend
    from casera_localcloud.hetzner.server import EmulatorHTTPServer, create_app

    app = create_app(None, FakeNodeBackend(), node_network="127.0.0.0/24",
                     lb_ports=range(0, 0))
    server = EmulatorHTTPServer(app, "127.0.0.1", 0, PLANTED["CASERA_HCLOUD_TOKEN"])
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown_all()


def hcloud(url: str) -> Client:
    return Client(PLANTED["CASERA_HCLOUD_TOKEN"], api_endpoint=url, poll_interval=0.05)


def make_checkout(root: Path, hetzner_url: str) -> Path:
    """A scratch checkout: params/ and runbooks/ copied, a git commit; its Hetzner is
    ``hetzner_url``."""
    shutil.copytree(REPO / "params", root / "params")
    shutil.copytree(REPO / "runbooks", root / "runbooks",
                    ignore=shutil.ignore_patterns("conftest.py", "__pycache__", ".ipynb*"))
    (root / "outputs").mkdir()
    (root / "secrets").mkdir()
    set_hetzner(root / "params" / "local.yaml", hetzner_url)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.email=t@t", "-c", "user.name=t",
                    "commit", "-qm", "scratch"], check=True)
    return root


def set_hetzner(params: Path, url: str) -> None:
    text, count = re.subn(r"(?m)^(  api_endpoint: )http://127\.0\.0\.1:18001/v1", rf"\g<1>{url}",
                          params.read_text())
    assert count == 1, f"{params}: no local Hetzner api_endpoint to point at {url}"
    params.write_text(text)


def add_env(root: Path, name: str) -> None:
    """Another environment in the checkout, a copy of local (same Hetzner, its own lock)."""
    text = (root / "params" / "local.yaml").read_text()
    (root / "params" / f"{name}.yaml").write_text(
        re.sub(r"(?m)^env: local$", f"env: {name}", text))
