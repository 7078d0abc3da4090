"""The audit trail: every kept run under outputs/<env>/<runbook>/, read back from its
``metadata.casera``; and an HTML rendering for reviewers."""

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
    """Write <run>.html beside the notebook with nbconvert, a summary of the run on top."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(record.path, as_version=4)
    m = record.meta
    summary = (f"# Run {m.get('run_id')}: {m.get('runbook')} on {m.get('env')} — "
               f"**{m.get('status')}**\n\n"
               f"operator {m.get('operator')} on {m.get('host')}, {m.get('start')} → "
               f"{m.get('end')} ({m.get('duration_s')} s), commit {m.get('git_commit')}"
               f"{' (dirty)' if m.get('git_dirty') else ''}, {m.get('changes', 0)} changes"
               + (f"\n\nfailed step: {m.get('failed_step')}" if m.get("failed_step") else ""))
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(summary))
    body, _ = HTMLExporter().from_notebook_node(nb)
    out = record.path.with_suffix(".html")
    out.write_text(body)
    return out
