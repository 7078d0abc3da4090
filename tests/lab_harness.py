"""A real JupyterLab for browser tests (tests/browser, and tests/e2e on the local cloud):
on loopback with a token, its config isolated, and the waits that make clicking reliable
(../shared/notes/browser-testing.md has the measurements behind them)."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Lab:
    base: str
    token: str
    work: Path

    def url(self, notebook: str) -> str:
        return f"{self.base}/lab/tree/{notebook}?token={self.token}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def jupyterlab(root: Path, environ: dict[str, str] | None = None) -> Iterator[Lab]:
    """JupyterLab serving ``root/work``; its config, data and log under ``root``."""
    work, home = root / "work", root / "jupyter"
    work.mkdir(parents=True, exist_ok=True)
    settings = home / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    # The news pop-up would cover the notebook; --LabApp.news_url= does not silence it.
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    token, port = secrets.token_hex(16), _free_port()
    env = dict(os.environ,
               JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"),
               JUPYTER_PATH=str(Path(sys.prefix) / "share" / "jupyter"), **(environ or {}))
    log_path = root / "lab.log"
    log = log_path.open("w")
    # python -m jupyterlab, not `jupyter lab`: that can pick another interpreter's script.
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={work}", "--ServerApp.port_retries=0"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("JupyterLab did not start: "
                                         + log_path.read_text()[-2000:]) from None
                time.sleep(0.3)
        yield Lab(base, token, work)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def open_notebook(page: Any, url: str) -> None:
    """Open it and wait for a connected, idle kernel: before that, running a cell opens a
    kernel picker or does nothing."""
    page.goto(url)
    page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status=\"idle\"]"
                 ).wait_for(timeout=60_000)
    page.locator(".jp-NotebookPanel .jp-KernelName", has_text="Python 3").wait_for(
        timeout=60_000)
    page.locator(".jp-StatusBar-Widget", has_text="Python 3 (ipykernel) | Idle").wait_for(
        timeout=60_000)


def run_cell(page: Any, index: int, wait_s: float | None = 60) -> None:
    """Run one cell as an operator does (Shift+Enter); with ``wait_s``, wait until it ends.

    Step through one cell at a time: cells queued behind a waiting gate (Run All) are
    replayed by jupyter-ui-poll after it, and a gate among them never sees its click.
    """
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".jp-InputPrompt").click()
    page.keyboard.press("Shift+Enter")
    if wait_s is not None:
        wait_cell(page, index, wait_s)


def wait_cell(page: Any, index: int, wait_s: float = 60) -> None:
    """Wait until the cell has run: its prompt shows an execution count, not ``[*]``."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".jp-InputPrompt").filter(has_text=re.compile(r"\[\d+\]")).wait_for(
        timeout=wait_s * 1000)


CHROMIUM = os.environ.get("CASERA_CHROMIUM", "/usr/bin/chromium")


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (its own browser download cannot work here)."""
    if not Path(CHROMIUM).exists():
        raise AssertionError(f"{CHROMIUM} is missing: `make install` installs Debian's "
                             f"chromium (or set CASERA_CHROMIUM to a Chromium binary)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise AssertionError("playwright is missing: `make install` installs the dev "
                             "extras") from None
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()
