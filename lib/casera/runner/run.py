"""``casera run``: one runbook, one environment, one kept and scrubbed output notebook.

The recipe, in order: check inputs (runbook, params, secrets) -> take the env lock -> execute
with papermill into a private temporary file -> classify the outcome (papermill records a cell
timeout as a success, so we decide ourselves) -> write ``metadata.casera`` -> scrub secrets and
scan -> keep the file under ``outputs/<env>/<runbook>/`` -> release the lock -> exit code.
"""

from __future__ import annotations

import getpass
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat
import papermill
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from papermill.exceptions import PapermillExecutionError

import casera
from casera.errors import LockHeld, ParamIssue, ParamsError, SecretLeakError
from casera.params import load_params, parse_override
from casera.paths import outputs_dir, project_dir, runbook_file
from casera.result import JOURNAL_ENV
from casera.runner import lock
from casera.runner.scrub import find_leaks, scrub
from casera.secrets import SecretStore
from casera.steps.storage import stored_secret_values

# Exit codes, documented in the README.
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_REFUSED, EXIT_TIMED_OUT, EXIT_LEAK = 0, 1, 2, 3, 4, 5

# Parameters every runbook declares; the runner owns them, -p may not set them.
RUNNER_PARAMETERS = ("env", "dry_run", "approve", "interactive", "run_id", "overrides")


@dataclass
class RunRequest:
    runbook: str
    env: str
    settings: list[str] = field(default_factory=list)  # raw -p KEY=VALUE
    dry_run: bool = False
    approve: bool = False
    break_lock: bool = False
    cell_timeout_s: int | None = None


@dataclass
class RunOutcome:
    exit_code: int
    status: str
    message: str
    output: Path | None = None


class _ScrubbingStream(io.TextIOBase):
    """Cell output streamed to the operator's terminal, with secrets masked on the way."""

    def __init__(self, secrets: list[str], target: Any) -> None:
        self._secrets, self._target = secrets, target

    def write(self, text: str) -> int:
        self._target.write(scrub(text, self._secrets)[0])
        self._target.flush()
        return len(text)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(project_dir()), *args], capture_output=True,
                             text=True, timeout=10, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    return out.stdout.strip()


def _code_version() -> dict[str, Any]:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(status) if status is not None else None,
            "package_version": casera.__version__}


def _split_settings(nb_path: Path, settings: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """-p values go to the notebook when it declares that parameter, else to params overrides."""
    declared = set(papermill.inspect_notebook(str(nb_path)))
    notebook, overrides = {}, {}
    for text in settings:
        key, value = parse_override(text)
        if key in RUNNER_PARAMETERS:
            raise ParamsError(f"-p {text}", [ParamIssue(
                key, "is set by the runner", f"use the --{key.replace('_', '-')} flag instead")])
        (notebook if key in declared else overrides)[key] = value
    return notebook, overrides


def _failed_step(nb: nbformat.NotebookNode) -> tuple[int | None, str | None]:
    """The first cell papermill did not complete, and the step heading above it."""
    heading = None
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    heading = line.lstrip("#").strip()
                    break
            continue
        meta = cell.get("metadata", {}).get("papermill", {})
        # A timed-out cell is "completed" without exception in papermill's records; only its
        # error output (KeyboardInterrupt from the interrupt) shows what happened.
        errored = any(out.get("output_type") == "error" for out in cell.get("outputs", []))
        if errored or meta.get("exception") or meta.get("status") in ("running", "failed"):
            return index, heading
    return None, None


def _mark_timeout(nb: nbformat.NotebookNode, index: int, seconds: int) -> None:
    """Correct papermill's record of a timed-out cell and say so where a reviewer looks."""
    nb.cells[index].metadata.setdefault("papermill", {}).update(status="timed-out",
                                                                 exception=True)
    banner = nbformat.v4.new_markdown_cell(
        f'<span style="color:red">**Timed out:** the next cell ran longer than the cell '
        f"timeout of {seconds} s and was interrupted; the run stopped there.</span>")
    banner.metadata["tags"] = ["casera-timeout"]
    nb.cells.insert(index, banner)


def _classify(error: BaseException | None) -> tuple[str, int]:
    if error is None:
        return "succeeded", EXIT_OK
    if isinstance(error, CellTimeoutError | TimeoutError):
        return "timed-out", EXIT_TIMED_OUT
    if isinstance(error, PapermillExecutionError) and error.ename == "ApprovalRefused":
        return "refused", EXIT_REFUSED
    return "failed", EXIT_FAILED


def _describe(error: BaseException | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, PapermillExecutionError):
        return f"{error.ename}: {error.evalue}"[:500]
    return f"{type(error).__name__}: {str(error).strip()}"[:500]


def _journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(request: RunRequest) -> RunOutcome:
    nb_path = runbook_file(request.runbook)
    if not nb_path.exists():
        known = sorted(p.stem for p in nb_path.parent.glob("*.ipynb"))
        return RunOutcome(EXIT_BAD_INPUT, "refused",
                          f"no runbook {request.runbook!r} ({nb_path}); known: {', '.join(known)}")
    secrets = SecretStore(request.env)
    secret_values = secrets.values()
    try:
        notebook_params, overrides = _split_settings(nb_path, request.settings)
        params = load_params(request.env, overrides=overrides, secrets=secrets)
    except ParamsError as exc:
        return RunOutcome(EXIT_BAD_INPUT, "refused", str(exc))

    run_id = uuid.uuid4().hex[:8]
    operator = os.environ.get("CASERA_OPERATOR") or getpass.getuser()
    started = datetime.now(UTC)
    holder = lock.LockHolder(run_id=run_id, operator=operator, host=socket.gethostname(),
                             pid=os.getpid(), since=started.isoformat(timespec="seconds"),
                             runbook=request.runbook)
    try:
        lock.acquire(request.env, holder, break_stale=request.break_lock)
    except LockHeld as exc:
        return RunOutcome(EXIT_REFUSED, "refused", str(exc))

    try:
        return _execute(request, nb_path, params.public_dict(), notebook_params, overrides,
                        secret_values, run_id, operator, started,
                        request.cell_timeout_s or params.runner.cell_timeout_s)
    finally:
        lock.release(request.env, run_id)


def _execute(request: RunRequest, nb_path: Path, params: dict[str, Any],
             notebook_params: dict[str, Any], overrides: dict[str, Any],
             secret_values: list[str], run_id: str, operator: str, started: datetime,
             cell_timeout_s: int) -> RunOutcome:
    parameters = {"env": request.env, "dry_run": request.dry_run, "approve": request.approve,
                  "interactive": False, "run_id": run_id, "overrides": overrides,
                  **notebook_params}
    # A private scratch dir: the notebook is written there while it runs, before any scrub.
    scratch = Path(tempfile.mkdtemp(prefix=f"casera-{run_id}-"))
    partial = scratch / "output.ipynb"
    journal = scratch / "journal.jsonl"
    os.environ[JOURNAL_ENV] = str(journal)
    os.environ["CASERA_RUN_ID"] = run_id
    os.environ["CASERA_OPERATOR"] = operator  # the kernel records the same operator
    stream = _ScrubbingStream(secret_values, sys.stdout)
    clock = time.monotonic()
    error: BaseException | None = None
    try:
        papermill.execute_notebook(
            str(nb_path), str(partial), parameters=parameters, kernel_name="python3",
            execution_timeout=cell_timeout_s, progress_bar=False, log_output=True,
            stdout_file=stream, stderr_file=stream, cwd=str(nb_path.parent),
        )
    except (PapermillExecutionError, CellTimeoutError, DeadKernelError, TimeoutError) as exc:
        error = exc
    finally:
        os.environ.pop(JOURNAL_ENV, None)
    ended = datetime.now(UTC)
    status, code = _classify(error)

    nb = nbformat.read(partial, as_version=4) if partial.exists() else nbformat.read(
        nb_path, as_version=4)
    failed_index, failed_step = _failed_step(nb) if error else (None, None)
    if status == "timed-out" and failed_index is not None:
        _mark_timeout(nb, failed_index, cell_timeout_s)
        failed_index += 1
    steps = _journal(journal)
    nb.metadata["casera"] = {
        "run_id": run_id, "runbook": request.runbook, "env": request.env,
        "operator": operator, "host": socket.gethostname(), **_code_version(),
        "parameters": {"runbook": notebook_params, "overrides": overrides,
                       "dry_run": request.dry_run, "approve": request.approve,
                       "params": params},
        "start": started.isoformat(timespec="seconds"), "end": ended.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - clock, 1), "cell_timeout_s": cell_timeout_s,
        "status": status, "failed_step": failed_step, "failed_cell": failed_index,
        "error": _describe(error),
        "steps": steps,
        "changes": sum(int(s.get("changed", 0)) for s in steps),
    }
    # Secrets made during the run (B2 application keys) count too: read them now.
    secret_values = secret_values + SecretStore(request.env).values() + \
        stored_secret_values(request.env)
    text, masked = scrub(nbformat.writes(nb), secret_values)
    shutil.rmtree(scratch, ignore_errors=True)
    leaks = find_leaks(text, secret_values)
    if leaks:
        raise SecretLeakError(f"run {run_id}: output not kept, secrets remain after scrubbing: "
                              f"{'; '.join(leaks)}")
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    output = outputs_dir(request.env) / request.runbook / f"{stamp}-{run_id}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)

    summary = f"{request.runbook} on {request.env}: {status} ({nb.metadata['casera']['changes']} " \
              f"changes) -> {output}"
    if masked:
        summary += f"\n  note: {masked} secret occurrence(s) were masked in the output"
    if error:
        summary += f"\n  failed step: {failed_step or '(before the first step)'} " \
                   f"(cell {failed_index}): {nb.metadata['casera']['error']}"
    return RunOutcome(code, status, scrub(summary, secret_values)[0], output)
