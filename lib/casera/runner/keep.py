"""Keeping a run: ``metadata.casera``, the status banner, scrub, independent scan, the file.

One recipe for both ways a runbook is run, so a reviewer reads the same record whichever it
was: ``casera run`` (headless, papermill) and an operator stepping through it in JupyterLab
(``casera.context.end_run``, from the cells ``casera.runner.interactive`` recorded). Kept
free of papermill so that a kernel can import it.
"""

from __future__ import annotations

import html
import json
import socket
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import nbformat

import casera
from casera.errors import SecretLeakError
from casera.paths import outputs_dir, project_dir
from casera.runner.scrub import find_leaks, scrub

Mode = Literal["headless", "interactive"]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(project_dir()), *args], capture_output=True,
                             text=True, timeout=10, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    return out.stdout.strip()


def code_version() -> dict[str, Any]:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(status) if status is not None else None,
            "package_version": casera.__version__}


def read_journal(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def failed_checks(steps: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Every red check of the run, with its step: what the banner and the summary name."""
    return [{"step": s["step"], "target": s["target"], "check": c["name"],
             "detail": c.get("detail", "")}
            for s in steps for c in s.get("checks", [])
            if c.get("kind", "check") == "check" and not c.get("ok")]


GREEN, AMBER, RED = "#1a7f37", "#9a6700", "#cf222e"


def status_banner(meta: dict[str, Any]) -> nbformat.NotebookNode:
    """The first cell of a kept notebook: how the run ended, before anything else is read."""
    status, dry = meta["status"], meta["parameters"]["dry_run"]
    color = RED if status != "succeeded" else AMBER if dry else GREEN
    title = f"{status.upper()}{' (DRY RUN: nothing was changed)' if dry else ''}"
    lines = [f'<div style="border-left:6px solid {color};padding:4px 12px">',
             f'<b style="color:{color}">{html.escape(title)}</b>: runbook '
             f'<code>{html.escape(meta["runbook"])}</code> on env '
             f'<code>{html.escape(meta["env"])}</code>, run {html.escape(meta["run_id"])} by '
             f'{html.escape(meta["operator"])} ({html.escape(meta.get("mode", "headless"))}), '
             f'{meta["start"]} → {meta["end"]}, '
             f'{meta["changes"]} change(s){" planned" if dry else ""}.']
    if meta.get("failed_step"):
        lines.append(f'<br>Failed step: <b>{html.escape(meta["failed_step"])}</b> '
                     f'(cell {meta["failed_cell"]}): {html.escape(meta.get("error") or "")}')
    for red in meta.get("failed_checks", []):
        lines.append(f'<br>✘ {html.escape(red["step"])} {html.escape(red["target"])}: '
                     f'<b>{html.escape(red["check"])}</b> {html.escape(red["detail"])}')
    lines.append("</div>")
    cell = nbformat.v4.new_markdown_cell("\n".join(lines))
    cell.metadata["tags"] = ["casera-status"]
    return cell


def run_metadata(*, mode: Mode, run_id: str, runbook: str, env: str, operator: str,
                 parameters: dict[str, Any], started: datetime, ended: datetime,
                 duration_s: float, status: str, failed_step: str | None,
                 failed_cell: int | None, error: str | None, steps: list[dict[str, Any]],
                 red: list[dict[str, str]], cell_timeout_s: int | None) -> dict[str, Any]:
    """``metadata.casera``: the same keys for a headless and an interactive run."""
    return {
        "run_id": run_id, "runbook": runbook, "env": env, "mode": mode,
        "operator": operator, "host": socket.gethostname(), **code_version(),
        "parameters": parameters,
        "start": started.isoformat(timespec="seconds"), "end": ended.isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 1), "cell_timeout_s": cell_timeout_s,
        "status": status, "failed_step": failed_step, "failed_cell": failed_cell,
        "error": error, "failed_checks": red, "steps": steps,
        "changes": sum(int(s.get("changed", 0)) for s in steps),
    }


def keep_run(nb: nbformat.NotebookNode, meta: dict[str, Any],
             secret_values: list[str]) -> tuple[Path, int]:
    """Banner + metadata, scrub every known secret, scan independently, write the file.

    Returns (kept file, masked occurrences). Raises :class:`SecretLeakError` (naming the kind
    of leak, never the value) and keeps nothing when the scan still finds a secret.
    ``meta["failed_cell"]`` counts the banner, which goes first.
    """
    nb.metadata["casera"] = meta
    nb.cells.insert(0, status_banner(meta))
    text, masked = scrub(nbformat.writes(nb), secret_values)
    leaks = find_leaks(text, secret_values)
    if leaks:
        raise SecretLeakError(f"run {meta['run_id']}: output not kept, secrets remain after "
                              f"scrubbing: {'; '.join(leaks)}")
    stamp = datetime.fromisoformat(meta["start"]).strftime("%Y%m%dT%H%M%SZ")
    output = outputs_dir(meta["env"]) / meta["runbook"] / f"{stamp}-{meta['run_id']}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return output, masked
