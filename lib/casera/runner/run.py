"""``casera run``: one runbook, one environment, one kept and scrubbed output notebook.

The recipe, in order: check inputs (runbook, params, secrets) -> take the env lock (held in
the environment's Hetzner project, see ``lock``) -> execute with papermill into a private
temporary file -> classify the outcome (papermill records a cell timeout as a success, and a
step whose checks are red fails even if its exception was caught, so we decide ourselves) ->
write ``metadata.casera`` and the status banner -> scrub secrets and scan independently ->
keep the file under ``outputs/<env>/<runbook>/`` -> release the lock -> exit code.
"""

from __future__ import annotations

import getpass
import io
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import nbformat
import papermill
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from papermill.exceptions import PapermillExecutionError

from casera.errors import CaseraError, LockHeld, ParamIssue, ParamsError
from casera.operator_secrets import SecretStore
from casera.params import load_params, parse_override
from casera.paths import runbook_file
from casera.result import JOURNAL_ENV
from casera.runner import lock
from casera.runner.keep import failed_checks, keep_run, read_journal, run_metadata
from casera.runner.scrub import LiveSecrets, SecretSource, find_leaks, scrub

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
    """Cell output streamed to the operator's terminal, with secrets masked on the way.

    Whole lines only: a value split over two chunks of output would pass a per-chunk scrub.
    The secrets are re-read as their files change, so a key made mid-run is masked too.
    """

    def __init__(self, secrets: SecretSource, target: Any) -> None:
        self._secrets, self._target = secrets, target
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        complete, newline, self._pending = self._pending.rpartition("\n")
        if newline:
            for line in complete.split("\n"):
                self._target.write(self._clean(line) + "\n")
            self._target.flush()
        return len(text)

    def _clean(self, line: str) -> str:
        secrets = self._secrets()
        line = scrub(line, secrets)[0]
        if find_leaks(line, secrets):
            # A form the scrub cannot mask (a value inside a larger base64 blob): the run will
            # end in exit 5; the terminal must not show it meanwhile.
            return "[casera: line withheld, it holds a secret in a form that cannot be masked]"
        return line

    def flush(self) -> None:
        """Lines are written as they complete; the rest waits for :meth:`close`."""

    def close(self) -> None:
        if self._pending:
            self._target.write(self._clean(self._pending))
            self._pending = ""
        self._target.flush()


def _split_settings(nb_path: Path, settings: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """-p values go to the notebook when it declares that parameter, else to params overrides."""
    declared = set(papermill.inspect_notebook(str(nb_path)))
    notebook, overrides = {}, {}
    for text in settings:
        key, value = parse_override(text)
        if key in RUNNER_PARAMETERS:
            raise ParamsError(f"-p {text}", [ParamIssue(
                key, "is set by the runner", f"use the --{key.replace('_', '-')} flag instead")])
        if key in declared and isinstance(value, date):
            # YAML reads 2026-12-02T10:15:00Z as a datetime, which papermill cannot store
            # in the notebook's JSON metadata: a runbook parameter gets the text as written.
            value = text.partition("=")[2].strip()
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


def _classify(error: BaseException | None, red: list[dict[str, str]]) -> tuple[str, int]:
    if error is None:
        # A red check fails the run even when the notebook caught the step's exception.
        return ("failed", EXIT_FAILED) if red else ("succeeded", EXIT_OK)
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
    holder = lock.LockHolder.for_this_process(run_id, operator, request.runbook)
    try:
        env_lock = lock.env_lock(request.env, params, secrets)
    except CaseraError as exc:
        return RunOutcome(EXIT_BAD_INPUT, "refused", str(exc))
    try:
        env_lock.acquire(holder, break_stale=request.break_lock)
    except LockHeld as exc:
        return RunOutcome(EXIT_REFUSED, "refused", str(exc))
    except CaseraError as exc:
        return RunOutcome(EXIT_FAILED, "failed", f"could not take the env lock, nothing ran: "
                                                 f"{scrub(str(exc), secret_values)[0]}")

    try:
        return _execute(request, nb_path, params.public_dict(), notebook_params, overrides,
                        secret_values, run_id, operator, started,
                        request.cell_timeout_s or params.runner.cell_timeout_s)
    finally:
        try:
            env_lock.release(run_id)
        except CaseraError as exc:
            print(f"casera: WARNING: the env lock {env_lock.name} was not released ({exc}); "
                  f"`casera lock --env {request.env}` shows it", file=sys.stderr)


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
    os.environ[lock.RUNNER_LOCK_ENV] = run_id  # start_run: the runner holds the lock
    live_secrets = LiveSecrets(request.env, secret_values)
    stream = _ScrubbingStream(live_secrets, sys.stdout)
    clock = time.monotonic()
    error: BaseException | None = None
    try:
        papermill.execute_notebook(
            str(nb_path), str(partial), parameters=parameters, kernel_name="python3",
            # log_output would also hand every chunk, unscrubbed, to papermill's logger
            # (stderr via logging's last-resort handler); the stream files get it all anyway.
            execution_timeout=cell_timeout_s, progress_bar=False, log_output=False,
            stdout_file=stream, stderr_file=stream, cwd=str(nb_path.parent),
        )
    except (PapermillExecutionError, CellTimeoutError, DeadKernelError, TimeoutError) as exc:
        error = exc
    finally:
        stream.close()
        os.environ.pop(JOURNAL_ENV, None)
        os.environ.pop(lock.RUNNER_LOCK_ENV, None)
    ended = datetime.now(UTC)
    steps = read_journal(journal)
    red = failed_checks(steps)
    status, code = _classify(error, red)

    nb = nbformat.read(partial, as_version=4) if partial.exists() else nbformat.read(
        nb_path, as_version=4)
    failed_index, failed_step = _failed_step(nb) if error else (None, None)
    if status == "timed-out" and failed_index is not None:
        _mark_timeout(nb, failed_index, cell_timeout_s)
        failed_index += 1
    if failed_index is not None:
        failed_index += 1  # the status banner goes first
    if status == "failed" and failed_step is None and red:
        failed_step = red[0]["step"]  # red, but its exception was caught in the notebook
    meta = run_metadata(
        mode="headless", run_id=run_id, runbook=request.runbook, env=request.env,
        operator=operator,
        parameters={"runbook": notebook_params, "overrides": overrides,
                    "dry_run": request.dry_run, "approve": request.approve, "params": params},
        started=started, ended=ended, duration_s=time.monotonic() - clock,
        status=status, failed_step=failed_step, failed_cell=failed_index,
        error=_describe(error), steps=steps, red=red, cell_timeout_s=cell_timeout_s)
    shutil.rmtree(scratch, ignore_errors=True)
    # Secrets made during the run (B2 application keys) count too: read them now.
    secret_values = live_secrets()
    output, masked = keep_run(nb, meta, secret_values)

    summary = f"{request.runbook} on {request.env}: {status} ({meta['changes']} " \
              f"changes) -> {output}"
    if masked:
        summary += f"\n  note: {masked} secret occurrence(s) were masked in the output"
    if error:
        first_line = (meta['error'] or "").splitlines()[0]
        summary += f"\n  failed step: {failed_step or '(before the first step)'} " \
                   f"(cell {failed_index}): {first_line}"
    for check in red:
        summary += (f"\n  failed check: {check['step']} {check['target']}: {check['check']}"
                    + (f": {check['detail']}" if check["detail"] else ""))
    return RunOutcome(code, status, scrub(summary, secret_values)[0], output)
