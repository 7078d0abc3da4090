"""The audit trail: every kept run under outputs/<env>/<runbook>/, read back from its
``metadata.casera``. What reviewers read (reports, the index, diffs) is in ``report``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from casera.errors import CaseraError
from casera.paths import outputs_dir, project_dir


@dataclass(frozen=True)
class RunRecord:
    path: Path
    meta: dict

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id", "?"))

    def row(self) -> list[str]:
        m = self.meta
        commit = (m.get("git_commit") or "?")[:10] + ("+dirty" if m.get("git_dirty") else "")
        return [m.get("start", "?"), m.get("env", "?"), m.get("runbook", "?"),
                m.get("operator", "?"), m.get("status", "?"), f"{m.get('duration_s', 0):.0f}s",
                commit, str(self.path.relative_to(project_dir()))]


def list_runs(env: str | None = None) -> list[RunRecord]:
    base = outputs_dir(env)
    records = []
    for path in base.rglob("*.ipynb"):
        if ".ipynb_checkpoints" in path.parts:
            continue
        try:
            meta = json.loads(path.read_text()).get("metadata", {}).get("casera")
        except (OSError, json.JSONDecodeError):
            continue
        if meta:
            records.append(RunRecord(path, meta))
    return sorted(records, key=lambda r: r.meta.get("start", ""))


def format_table(records: list[RunRecord]) -> str:
    header = ["time", "env", "runbook", "operator", "status", "duration", "commit", "file"]
    rows = [header] + [r.row() for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def find_run(ref: str) -> RunRecord:
    """A run by id, by unique id prefix, or by path."""
    path = Path(ref)
    if path.suffix == ".ipynb" and path.exists():
        meta = json.loads(path.read_text()).get("metadata", {}).get("casera") or {}
        return RunRecord(path.resolve(), meta)
    matches = [r for r in list_runs() if r.run_id.startswith(ref)]
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        raise CaseraError(f"{found} matching {ref!r}; `casera runs` lists them")
    return matches[0]


def render_html(record: RunRecord) -> Path:
    """The run's self-contained report beside its notebook (casera.runner.report)."""
    from casera.runner.report import render_report

    return render_report(record)[0]
