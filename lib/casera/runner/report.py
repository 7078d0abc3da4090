"""What a reviewer reads: one run as a self-contained HTML file, the index of all runs, and
the difference between two runs of one runbook.

The report must open offline, months later: nbconvert's default HTML loads require.js, the
widget manager and MathJax from CDNs (measured: offline, no widget renders). So images stay
embedded (``embed_images``), require.js and MathJax are left out (the runbooks use neither),
and the widget manager is inlined as a ``data:`` URL from ``@jupyter-widgets/html-manager``'s
``dist/embed.js``, which needs no require.js; `make install` fetches it from npm
(../shared/notes/browser-testing.md, "nbconvert HTML that works offline").
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from casera.errors import CaseraError
from casera.paths import outputs_dir
from casera.runner.audit import RunRecord, list_runs

# Fetched by `make install` (npm pack @jupyter-widgets/html-manager, its dist/embed.js).
WIDGET_BUNDLE = Path(__file__).resolve().parent / "vendor" / "html-manager-embed.js"
GREEN, AMBER, RED, GREY, BLUE = "#1a7f37", "#9a6700", "#cf222e", "#6e7781", "#0969da"


def _status_color(meta: dict[str, Any]) -> str:
    if meta.get("status") != "succeeded":
        return RED
    return AMBER if (meta.get("parameters") or {}).get("dry_run") else GREEN


def _e(value: object) -> str:
    return html.escape(str(value))


def _step_color(step: dict[str, Any]) -> str:
    red = any(c.get("kind", "check") == "check" and not c.get("ok")
              for c in step.get("checks", []))
    if red:
        return RED
    return BLUE if int(step.get("changed", 0)) else GREY


def timeline_svg(steps: list[dict[str, Any]], width: int = 900) -> str:
    """A bar per step, in the order they ran, as long as it took; its changes beside it.

    Steps run one after another, so each bar starts where the previous one ended. Red: a
    check failed; blue: it changed something; grey: nothing to do.
    """
    if not steps:
        return '<p class="casera-timeline-empty">No step journaled (the run stopped first).</p>'
    row, label_w, pad = 22, 300, 6
    total = sum(float(s.get("duration_s", 0)) for s in steps) or 1.0
    scale = (width - label_w - 120) / total
    parts = []
    start = 0.0
    for index, step in enumerate(steps):
        seconds = float(step.get("duration_s", 0))
        y = pad + index * row
        x = label_w + start * scale
        bar_w = max(seconds * scale, 2.0)
        changed = int(step.get("changed", 0))
        name = f"{step.get('step', '?')} {step.get('target', '')}".strip()
        tip = (f"{name}: {seconds:.1f} s, {changed} change(s)"
               + ("" if not step.get("dry_run") else " planned (dry run)"))
        parts.append(
            f'<g class="casera-step"><title>{_e(tip)}</title>'
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{_e(name[:42])}</text>'
            f'<rect x="{x:.1f}" y="{y + 3}" width="{bar_w:.1f}" height="{row - 8}" '
            f'fill="{_step_color(step)}"/>'
            f'<text x="{x + bar_w + 4:.1f}" y="{y + 14}">{seconds:.1f} s · {changed} '
            f'change{"s" if changed != 1 else ""}</text></g>')
        start += seconds
    height = pad * 2 + len(steps) * row
    return (f'<svg class="casera-timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" font-family="sans-serif" font-size="12" role="img" '
            f'aria-label="timeline of {len(steps)} steps">{"".join(parts)}</svg>')


def _params_text(params: dict[str, Any]) -> str:
    shown = {k: v for k, v in params.items() if k != "params"}
    return json.dumps(shown, sort_keys=True, default=str)


def header_html(meta: dict[str, Any]) -> str:
    """The top of a report: the status banner and who, when, which commit, params, changes,
    the failed step; then the timeline."""
    status = meta.get("status", "?")
    params = meta.get("parameters") or {}
    dry = bool(params.get("dry_run"))
    commit = (meta.get("git_commit") or "?") + (" (dirty)" if meta.get("git_dirty") else "")
    rows = [
        ("runbook", f"{meta.get('runbook')} on env {meta.get('env')}, run {meta.get('run_id')}"),
        ("who", f"{meta.get('operator')} on {meta.get('host')}"
                + (f" ({meta['mode']})" if meta.get("mode") else "")),
        ("when", f"{meta.get('start')} → {meta.get('end')} ({meta.get('duration_s')} s)"),
        ("commit", commit),
        ("parameters", _params_text(params)),
        ("changes", f"{meta.get('changes', 0)}{' planned' if dry else ''}"),
    ]
    if meta.get("failed_step") or status != "succeeded":
        error = (meta.get("error") or "").splitlines()
        rows.append(("failed step", f"{meta.get('failed_step') or '(before the first step)'}"
                                    + (f": {error[0]}" if error else "")))
    for check in meta.get("failed_checks") or []:
        rows.append(("failed check", f"{check.get('step')} {check.get('target')}: "
                                     f"{check.get('check')} {check.get('detail', '')}"))
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    title = f"{str(status).upper()}{' (DRY RUN: nothing was changed)' if dry else ''}"
    return (
        '<section class="casera-report-header" style="font-family:sans-serif;margin:1em">'
        f'<div class="casera-banner" data-status="{_e(status)}" style="background:'
        f'{_status_color(meta)};color:white;padding:.6em 1em;font-size:1.3em;font-weight:bold">'
        f'{_e(title)}</div>'
        f'<table class="casera-run" style="margin:.6em 0;border-collapse:collapse">{table}</table>'
        f'<h3>Timeline</h3>{timeline_svg(meta.get("steps") or [])}</section>')


def _exporter(widget_js: str | None) -> Any:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", embed_images=True, require_js_url="",
                            mathjax_url="")
    if widget_js is not None:
        data = base64.b64encode(widget_js.encode()).decode()
        exporter.widget_renderer_url = f"data:text/javascript;base64,{data}"
    return exporter


def render_report(record: RunRecord, out: Path | None = None) -> tuple[Path, list[str]]:
    """Write the run's report (default: <run>.html beside the notebook); return it and the
    warnings a reviewer must know about (widgets that will not render)."""
    import nbformat

    nb = nbformat.read(record.path, as_version=4)
    warnings: list[str] = []
    widget_js = WIDGET_BUNDLE.read_text() if WIDGET_BUNDLE.exists() else None
    if widget_js is None and "widgets" in nb.metadata:
        warnings.append(f"widgets will not render: {WIDGET_BUNDLE} is missing; `make install` "
                        f"fetches it (npm pack @jupyter-widgets/html-manager)")
    body, _ = _exporter(widget_js).from_notebook_node(nb)
    # Nothing may be fetched: drop the empty script tags left for require.js and MathJax.
    body = re.sub(r'<script[^>]*\ssrc=""[^>]*>\s*</script>', "", body)
    notice = "".join(f'<p class="casera-warning" style="color:{RED}">{_e(w)}</p>'
                     for w in warnings)
    header = header_html(record.meta) + notice
    body, found = re.subn(r"(<body[^>]*>)", lambda m: m.group(1) + header, body, count=1)
    if not found:
        raise CaseraError(f"{record.path}: nbconvert's HTML has no <body>; report not written")
    target = out or record.path.with_suffix(".html")
    target.write_text(body)
    return target, warnings


def _trend_svg(records: list[RunRecord], width: int = 160, height: int = 32) -> str:
    durations = [float(r.meta.get("duration_s") or 0) for r in records]
    if len(durations) < 2:
        return ""
    top = max(durations) or 1.0
    step = width / (len(durations) - 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - d / top * (height - 4):.1f}"
                      for i, d in enumerate(durations))
    return (f'<svg class="casera-trend" width="{width}" height="{height}" role="img" '
            f'aria-label="duration of the last {len(durations)} runs, at most {top:.0f} s">'
            f'<polyline fill="none" stroke="{BLUE}" stroke-width="1.5" points="{points}"/></svg>')


def index_html(records: Iterable[RunRecord], base: Path) -> str:
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        key = (str(record.meta.get("env", "?")), str(record.meta.get("runbook", "?")))
        groups.setdefault(key, []).append(record)
    sections = []
    for (env, runbook), runs in sorted(groups.items()):
        rows = []
        for r in reversed(runs):
            m = r.meta
            report = r.path.with_suffix(".html")
            link = report.relative_to(base).as_posix() if report.is_relative_to(base) else (
                report.as_uri())
            commit = (m.get("git_commit") or "?")[:10] + ("+dirty" if m.get("git_dirty") else "")
            rows.append(
                f'<tr><td><a href="{_e(link)}">{_e(m.get("start", "?"))}</a></td>'
                f'<td style="color:{_status_color(m)}">{_e(m.get("status", "?"))}'
                f'{" (dry run)" if (m.get("parameters") or {}).get("dry_run") else ""}</td>'
                f'<td>{_e(m.get("duration_s", "?"))} s</td><td>{_e(m.get("changes", 0))}</td>'
                f'<td>{_e(m.get("operator", "?"))}</td><td><code>{_e(commit)}</code></td>'
                f'<td>{_e(m.get("failed_step") or "")}</td></tr>')
        sections.append(
            f'<section class="casera-runbook"><h2>{_e(env)} / {_e(runbook)} '
            f'{_trend_svg(runs)}</h2><table><tr><th>start</th><th>status</th>'
            f'<th>duration</th><th>changes</th><th>operator</th><th>commit</th>'
            f'<th>failed step</th></tr>{"".join(rows)}</table></section>')
    body = "".join(sections) or "<p>No runs kept yet.</p>"
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>casera runs'
            '</title><style>body{font-family:sans-serif;margin:1em}td,th{padding:2px 8px;'
            'text-align:left}</style></head><body><h1>casera runs</h1>' + body + "</body></html>")


def write_index(env: str | None = None) -> tuple[Path, list[str]]:
    """outputs/index.html, rendering the report of every run that has none (or an older one)."""
    base = outputs_dir()
    base.mkdir(parents=True, exist_ok=True)
    records = list_runs(env)
    warnings: list[str] = []
    for record in records:
        report = record.path.with_suffix(".html")
        if not report.exists() or report.stat().st_mtime < record.path.stat().st_mtime:
            _, more = render_report(record)
            warnings += [w for w in more if w not in warnings]
    out = base / "index.html"
    out.write_text(index_html(records, base))
    return out, warnings


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        flat: dict[str, object] = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def diff_runs(a: RunRecord, b: RunRecord) -> str:
    """What differs between two runs of one runbook: parameters, then each step's findings
    (reason, checks) and changes (count and diff lines). Same things are not listed."""
    ma, mb = a.meta, b.meta
    if ma.get("runbook") != mb.get("runbook"):
        raise CaseraError(f"run {a.run_id} is of runbook {ma.get('runbook')!r} and run "
                          f"{b.run_id} of {mb.get('runbook')!r}; diff compares two runs of "
                          f"one runbook (`casera runs` lists them)")
    out = [f"{ma.get('runbook')}: run {a.run_id} ({ma.get('env')}, {ma.get('start')}, "
           f"{ma.get('status')}, {ma.get('changes', 0)} changes) -> run {b.run_id} "
           f"({mb.get('env')}, {mb.get('start')}, {mb.get('status')}, "
           f"{mb.get('changes', 0)} changes)"]
    for key in ("env", "status", "operator", "git_commit", "failed_step"):
        if ma.get(key) != mb.get(key):
            out.append(f"  {key}: {ma.get(key)!r} -> {mb.get(key)!r}")
    pa, pb = _flat(ma.get("parameters") or {}), _flat(mb.get("parameters") or {})
    changed = [k for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    out.append("parameters: " + ("same" if not changed else f"{len(changed)} differ"))
    out += [f"  {k}: {pa.get(k, '(unset)')!r} -> {pb.get(k, '(unset)')!r}" for k in changed]

    def by_step(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {f"{s.get('step')} {s.get('target')}": s for s in meta.get("steps") or []}

    sa, sb = by_step(ma), by_step(mb)
    names = list(sa) + [n for n in sb if n not in sa]
    same = 0
    for name in names:
        x, y = sa.get(name), sb.get(name)
        if x is None or y is None:
            out.append(f"step {name}: only in run {a.run_id if y is None else b.run_id}")
            continue
        lines = []
        if x.get("changed") != y.get("changed"):
            lines.append(f"  changes: {x.get('changed')} -> {y.get('changed')}")
        for line in x.get("diff", []):
            if line not in y.get("diff", []):
                lines.append(f"  - {line}")
        for line in y.get("diff", []):
            if line not in x.get("diff", []):
                lines.append(f"  + {line}")
        if x.get("reason") != y.get("reason"):
            lines.append(f"  reason: {x.get('reason')!r} -> {y.get('reason')!r}")
        cx = {c["name"]: c for c in x.get("checks", [])}
        cy = {c["name"]: c for c in y.get("checks", [])}
        for check in list(cx) + [c for c in cy if c not in cx]:
            u, v = cx.get(check), cy.get(check)
            if u is None or v is None or (u.get("ok"), u.get("detail")) != (v.get("ok"),
                                                                            v.get("detail")):
                def show(c: dict[str, Any] | None) -> str:
                    if c is None:
                        return "(absent)"
                    mark = "info" if c.get("kind") == "info" else "ok" if c.get("ok") else "FAIL"
                    return f"[{mark}] {c.get('detail', '')}".rstrip()
                lines.append(f"  check {check}: {show(u)} -> {show(v)}")
        if lines:
            out.append(f"step {name}:")
            out += lines
        else:
            same += 1
    out.append(f"{same} step(s) the same in both runs")
    return "\n".join(out)
