"""The context a runbook passes to every step: params, secrets, and how this run was started.

Created by the first code cell of each runbook from its papermill parameters; plain data, no
global state, so a step is an ordinary function of ``ctx`` that tests can call directly.

``start_run`` also makes a run out of a session the runner did not start (JupyterLab, nbval,
a Python prompt): it takes the environment's lock (``casera.runner.lock``), released by
:func:`end_run`, when the kernel exits (atexit), or, when the kernel is killed (nbval, a
JupyterLab restart), by a small watcher process that outlives it; a lock whose watcher died
too is reported as stale with its holder and age and broken with ``casera run --break-lock``;
it journals the session's steps to a private file (``ctx.journal``) so ``run_changes`` works;
it masks the environment's secrets in everything the kernel sends to the notebook; and it
records the cells the operator runs (``casera.runner.interactive``), which :func:`end_run`
keeps, scrubbed, in ``outputs/<env>/<runbook>/`` with the same ``metadata.casera`` as a
headless run (``mode: interactive``). Under ``casera run`` the runner does all of this
itself, and says so through the environment.
"""

from __future__ import annotations

import atexit
import getpass
import html
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from casera.operator_secrets import SecretStore
from casera.params import Params, load_params
from casera.result import JOURNAL_ENV

# Runs this process holds the env lock for (interactive sessions): released at exit.
_HELD: dict[str, tuple[Any, str]] = {}


@dataclass
class _Session:
    """What end_run needs to keep an interactive run that the RunContext does not carry."""

    run_id: str
    runbook: str
    overrides: dict[str, Any]
    recorder: Any  # casera.runner.interactive.Recorder
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    clock: float = field(default_factory=time.monotonic)


_SESSIONS: dict[str, _Session] = {}


@dataclass(frozen=True)
class RunContext:
    env: str
    params: Params
    secrets: SecretStore = field(repr=False)
    dry_run: bool = False
    approve: bool = False
    interactive: bool = True
    run_id: str = "interactive"
    operator: str = "unknown"
    journal: Path | None = None
    # What earlier steps of a dry run would have made (servers, the firewall), so that later
    # steps plan against that instead of the empty cloud, and the plan equals the run.
    planned: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # What the steps of one run share instead of reading or opening again: open SSH and
    # Docker connections (providers' pools, checked alive before each reuse).
    shared: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def summary_lines(self) -> list[str]:
        p = self.params
        lines = [
            f"env {self.env}, run {self.run_id}, operator {self.operator}",
            f"mode: {'DRY RUN (nothing will be changed)' if self.dry_run else 'apply changes'}; "
            f"approval: {p.runner.approval}{' + --approve' if self.approve else ''}; "
            f"{'interactive' if self.interactive else 'headless'}",
            f"servers: {p.hetzner.server_count} x {p.hetzner.server_type} in {p.hetzner.location}"
            f" via {p.hetzner.api_endpoint}",
            "overlay encryption: " + ("on (IPsec/ESP)" if p.swarm.overlay_encrypted else
                                      "OFF for this environment (see params swarm.*)"),
            f"service endpoints: {p.swarm.endpoint_mode}, published ports: {p.swarm.publish_mode}",
        ]
        return lines

    def __str__(self) -> str:
        return "\n".join(self.summary_lines())

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return "<pre>" + html.escape(str(self)) + "</pre>"


def start_run(
    env: str,
    dry_run: bool = False,
    approve: bool = False,
    interactive: bool = True,
    run_id: str = "interactive",
    overrides: dict[str, Any] | None = None,
    runbook: str = "interactive",
) -> RunContext:
    """Validate params and load secrets for one run; raises ParamsError before any remote call.

    Unless the runner started this kernel for this run (and so holds the lock), takes the
    env lock; raises :class:`~casera.errors.LockHeld` naming the holder when another run
    has it.
    """
    from casera.runner import lock
    from casera.runner.interactive import Recorder, install
    from casera.runner.scrub import LiveSecrets, install_kernel_scrub

    secrets = SecretStore(env)
    params = load_params(env, overrides=overrides, secrets=secrets)
    operator = os.environ.get("CASERA_OPERATOR") or getpass.getuser()
    under_runner = run_id != "interactive" and os.environ.get(lock.RUNNER_LOCK_ENV) == run_id
    journal = Path(os.environ[JOURNAL_ENV]) if os.environ.get(JOURNAL_ENV) else None
    if not under_runner:
        held = _HELD.get(env)
        if run_id == "interactive":
            # Running the first cell again keeps this session's run (and its lock).
            run_id = held[1] if held else uuid.uuid4().hex[:8]
        if held and held[1] != run_id:
            _release(env)
        runbook = _runbook_name(runbook)
        env_lock = lock.env_lock(env, params, secrets)
        env_lock.acquire(lock.LockHolder.for_this_process(run_id, operator, runbook))
        if not held or held[1] != run_id:
            lock.release_when_parent_exits(env, run_id, params.hetzner.api_endpoint)
        _HELD[env] = (env_lock, run_id)
        if journal is None:
            journal = Path(tempfile.gettempdir()) / f"casera-{env}-{run_id}.jsonl"
            os.environ[JOURNAL_ENV] = str(journal)
        install_kernel_scrub(LiveSecrets(env))
        session = _SESSIONS.get(env)
        if session is None or session.run_id != run_id:
            session = _Session(run_id, runbook, dict(overrides or {}), Recorder())
            _SESSIONS[env] = session
            install(session.recorder, this_cell=True)
        else:
            session.overrides = dict(overrides or {})
    return RunContext(env=env, params=params, secrets=secrets, dry_run=dry_run,
                      approve=approve, interactive=interactive, run_id=run_id,
                      operator=operator, journal=journal)


def _runbook_name(given: str) -> str:
    """JupyterLab tells the kernel which notebook it runs (``__session__``); use it."""
    if given != "interactive":
        return given
    try:
        from IPython import get_ipython
    except ImportError:
        return given
    shell = get_ipython()
    session = shell.user_ns.get("__session__") if shell is not None else None
    return Path(session).stem if isinstance(session, str) and session else given


def end_run(ctx: RunContext) -> str:
    """End an interactive run (its runbook's last cell): keep the cells run so far as a
    scrubbed executed copy in ``outputs/<env>/<runbook>/``, release the env lock, and say
    what happened. Under the runner this does nothing: the runner keeps and releases."""
    held = _HELD.get(ctx.env)
    if not held or held[1] != ctx.run_id:
        return (f"env {ctx.env}: the lock is not held by this session (run {ctx.run_id}); "
                "under `casera run` the runner keeps the output and releases the lock")
    session = _SESSIONS.get(ctx.env)
    try:
        kept = (_keep_interactive(ctx, session) if session and session.run_id == ctx.run_id
                else f"run {ctx.run_id}: no cells were recorded, nothing kept")
    finally:
        _release(ctx.env)
    return f"{kept}\nenv {ctx.env}: lock of run {ctx.run_id} released"


def _keep_interactive(ctx: RunContext, session: _Session) -> str:
    from casera.errors import SecretLeakError
    from casera.runner import interactive, keep
    from casera.runner.scrub import LiveSecrets

    interactive.uninstall(session.recorder)
    nb = session.recorder.notebook()
    steps = keep.read_journal(ctx.journal)
    # A step run again (after a fix) counts by its last run, as a re-run cell does.
    latest = {(s.get("step"), s.get("target")): s for s in steps}
    red = keep.failed_checks(list(latest.values()))
    errors = session.recorder.final_errors()
    failed_step = failed_cell = error = None
    if errors:
        index, cell = errors[0]
        ename, evalue = cell.error
        status = "refused" if ename == "ApprovalRefused" else "failed"
        lines = [line for line in cell.source.splitlines() if line.strip()]
        failed_step = f"cell [{cell.execution_count}] {lines[-1].strip() if lines else ''}"[:120]
        failed_cell, error = index + 1, f"{ename}: {evalue}"[:500]  # + 1: the banner
    elif red:
        status, failed_step = "failed", red[0]["step"]
    else:
        status = "succeeded"
    meta = keep.run_metadata(
        mode="interactive", run_id=ctx.run_id, runbook=session.runbook, env=ctx.env,
        operator=ctx.operator,
        parameters={"runbook": {}, "overrides": session.overrides, "dry_run": ctx.dry_run,
                    "approve": ctx.approve, "params": ctx.params.public_dict()},
        started=session.started, ended=datetime.now(UTC),
        duration_s=time.monotonic() - session.clock, status=status,
        failed_step=failed_step, failed_cell=failed_cell, error=error, steps=steps, red=red,
        cell_timeout_s=None)
    _SESSIONS.pop(ctx.env, None)
    try:
        output, masked = keep.keep_run(nb, meta, LiveSecrets(ctx.env, ctx.secrets.values())())
    except SecretLeakError as exc:
        return (f"{exc}. The cell that printed it must be fixed; `casera run` would refuse the "
                "same output (exit 5)")
    note = f"; {masked} secret occurrence(s) masked" if masked else ""
    return (f"{session.runbook} on {ctx.env}: {status} ({meta['changes']} changes, "
            f"interactive, operator {ctx.operator}) -> kept {output}{note}")


def _release(env: str) -> None:
    env_lock, run_id = _HELD.pop(env)
    env_lock.release(run_id)


@atexit.register
def _release_all() -> None:
    for env in list(_HELD):
        try:
            _release(env)
        except Exception as exc:  # noqa: BLE001 - at exit, say it and let the rest go
            print(f"casera: the env lock of {env} was not released: {exc}")
