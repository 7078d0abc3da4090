"""What the e2e modules share: `casera ...` as CI and operators run it, and the local
Hetzner through the official client. A module of its own (not conftest.py), so the test
modules can import it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nbformat
import papermill
from hcloud import Client
from papermill.exceptions import PapermillExecutionError

from casera.paths import runbook_file
from casera.result import JOURNAL_ENV
from casera_localcloud.local_credentials import read_local_secrets

HETZNER = "http://127.0.0.1:18001/v1"


# (what ran, wall seconds) of every casera command and stopped run: the suite's summary
# says how much of its time the runs themselves took (conftest.pytest_terminal_summary).
RUN_TIMES: list[tuple[str, float]] = []


@contextmanager
def timed_run(what: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        RUN_TIMES.append((what, time.monotonic() - started))


def casera(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    with timed_run(" ".join(args[:2])):
        done = subprocess.run([sys.executable, "-m", "casera.runner.cli", *args],
                              capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(done.stdout[-3000:])
    sys.stderr.write(done.stderr[-3000:])
    return done


def hcloud() -> Client:
    return Client(read_local_secrets()["CASERA_HCLOUD_TOKEN"], api_endpoint=HETZNER)


STOPPED = "e2e: run stopped right after"


def run_stopped_after(runbook: str, call: str, tmp: Path, parameters: dict[str, Any],
                      journal: Path | None = None) -> None:
    """``runbook``'s own cells in a real kernel up to and including the first code cell that
    contains ``call``, then a cell that raises, as a crash or a Ctrl-C right there would:
    whatever the run made so far stays, the rest never runs. Fails if the run failed
    earlier than that. ``journal``: where the steps journal, told to the kernel as the
    runner tells it (in its environment, before the first step)."""
    nb = nbformat.read(runbook_file(runbook), as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and call in c.source)
    first = [nbformat.v4.new_code_cell(f"import os\nos.environ[{JOURNAL_ENV!r}] = "
                                       f"{str(journal)!r}")] if journal else []
    nb.cells = first + nb.cells[:index + 1] + [nbformat.v4.new_code_cell(
        f"raise RuntimeError({f'{STOPPED} {call}'!r})")]
    source, output = tmp / "stopped.ipynb", tmp / "stopped-out.ipynb"
    nbformat.write(nb, source)
    try:
        with timed_run(f"{runbook} (stopped)"):
            papermill.execute_notebook(
                str(source), str(output), kernel_name="python3", progress_bar=False,
                cwd=str(runbook_file(runbook).parent), execution_timeout=900,
                parameters={"env": "local", "interactive": False, **parameters})
    except PapermillExecutionError as stopped:
        assert stopped.ename == "RuntimeError" and STOPPED in stopped.evalue, (
            f"the run failed before {call}: {stopped.ename}: {stopped.evalue[:600]}")
    else:
        raise AssertionError(f"the run of {runbook} did not stop after {call}")
