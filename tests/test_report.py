"""Reports for reviewers: `casera show` (one self-contained HTML file), `casera runs --html`
(outputs/index.html) and `casera diff`. tests/browser opens the report with the network off."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from report_fixtures import executed_notebook, keep, meta, steps
from runner_helpers import casera

from casera.runner import report
from casera.runner.audit import find_run


@pytest.fixture(scope="module")
def executed():
    return executed_notebook()


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CASERA_PROJECT_DIR", str(tmp_path))
    return tmp_path


def remote_loads(html: str) -> list[str]:
    """Every src/href that a browser would fetch from the network."""
    return [m for m in re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)', html)
            if re.match(r"(https?:)?//", m)]


def test_show_writes_one_offline_file(executed, root: Path) -> None:
    assert report.WIDGET_BUNDLE.exists(), "make install fetches the widget manager bundle"
    kept = keep(executed, root, meta("aaaa1111"))
    path, warnings = report.render_report(find_run("aaaa1111"))
    assert path == kept.with_suffix(".html") and warnings == []
    html = path.read_text()
    assert remote_loads(html) == []
    assert '<script src=""' not in html
    # The widget manager is inlined, and the widget's state is there for it.
    assert "data:text/javascript;base64," in html
    assert "application/vnd.jupyter.widget-state+json" in html
    assert '"description": "replicas"' in html or '"description":"replicas"' in html
    # Images embedded, not linked.
    assert "data:image/png;base64,iVBORw0KGgo" in html
    header = html[html.index('<section class="casera-report-header"'):]
    header = header[:header.index("</section>")]
    assert 'data-status="succeeded"' in header and "#1a7f37" in header
    assert "ana &lt;ops&gt; on ci-1" in header and "<ops>" not in header
    assert "0123456789abcdef" in header and "services.api.replicas" in header
    assert "failed step" not in header
    assert header.count('class="casera-step"') == 3
    assert "12.5 s · 2 changes" in header and "0.4 s · 0 changes" in header


def test_a_failed_run_names_its_step_and_check(executed, root: Path) -> None:
    keep(executed, root, meta("bbbb2222", status="failed", failed_step="servers local",
                              error="ChecksFailed: servers local: 1 check(s) failed",
                              failed_checks=[{"step": "servers", "target": "local",
                                              "check": "all running", "detail": "2/3 running"}],
                              steps=steps(red=True)))
    path, _ = report.render_report(find_run("bbbb2222"))
    html = path.read_text()
    assert 'data-status="failed"' in html and "#cf222e" in html
    assert ("<th>failed step</th><td>servers local: ChecksFailed: servers local: "
            "1 check(s) failed</td>") in html
    assert "servers local: all running 2/3 running" in html
    # The red step's bar is red, the others not.
    bars = re.findall(r'<g class="casera-step"><title>([^<]*)</title>.*?fill="([^"]+)"', html)
    assert [(t.split(":")[0], c) for t, c in bars] == [
        ("ssh key casera", "#6e7781"), ("servers local", "#cf222e"),
        ("firewall casera-fw", "#0969da")]


def test_without_the_bundle_the_report_says_widgets_are_missing(
        executed, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "WIDGET_BUNDLE", root / "absent.js")
    keep(executed, root, meta("cccc3333"))
    path, warnings = report.render_report(find_run("cccc3333"))
    assert len(warnings) == 1 and "make install" in warnings[0]
    assert warnings[0] in path.read_text().replace("&#x27;", "'")
    assert remote_loads(path.read_text()) == []


def test_cli_show_runs_html_and_diff(executed, root: Path) -> None:
    keep(executed, root, meta("dddd4444"))
    keep(executed, root, meta("eeee5555", start="2026-12-01T11:00:00+00:00", duration_s=3.0,
                              operator="bo", steps=steps(changed_servers=0),
                              parameters={"runbook": {}, "overrides": {}, "dry_run": False,
                                          "approve": True, "params": {"env": "local"}}))
    shown = casera("show", "dddd4444")
    assert shown.returncode == 0, shown.stderr
    assert Path(shown.stdout.strip()).read_text().count('class="casera-step"') == 3

    index = casera("runs", "--html")
    assert index.returncode == 0, index.stderr
    path = Path(index.stdout.strip())
    assert path == root / "outputs" / "index.html"
    html = path.read_text()
    links = re.findall(r'<a href="([^"]+)"', html)
    assert links == ["local/bootstrap/20261201T110000Z-eeee5555.html",
                     "local/bootstrap/20261201T100000Z-dddd4444.html"]
    assert all((path.parent / link).exists() for link in links)  # reports made for the index
    assert 'class="casera-trend"' in html and "at most 14 s" in html
    assert "<td>bo</td>" in html and "<code>0123456789</code>" in html

    diff = casera("diff", "dddd4444", "eeee5555")
    assert diff.returncode == 0, diff.stderr
    lines = diff.stdout.splitlines()
    assert "  operator: 'ana <ops>' -> 'bo'" in lines
    assert "parameters: 1 differ" in lines
    assert "  overrides.services.api.replicas: 3 -> '(unset)'" in lines
    assert lines[lines.index("step servers local:") + 1:][:3] == [
        "  changes: 2 -> 0", "  - + server casera-1", "  - + server casera-2"]
    assert "2 step(s) the same in both runs" in lines


def test_diff_refuses_two_runbooks(executed, root: Path) -> None:
    keep(executed, root, meta("ffff6666"))
    keep(executed, root, meta("abab7777", runbook="preflight"))
    diff = casera("diff", "ffff6666", "abab7777")
    assert diff.returncode == 2 and "two runs of one runbook" in diff.stderr


def test_timeline_of_no_steps_says_so() -> None:
    assert "No step journaled" in report.timeline_svg([])
    svg = report.timeline_svg(json.loads(json.dumps(steps())))
    assert svg.startswith("<svg") and svg.count("<rect") == 3
