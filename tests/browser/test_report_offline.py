"""A reviewer offline: the report of a kept run opened from disk in Chromium with every
non-file request aborted shows the banner, the timeline and a rendered widget."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from report_fixtures import executed_notebook, keep, meta

from casera.runner import report
from casera.runner.audit import find_run


def test_report_renders_offline(browser, screenshot, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASERA_PROJECT_DIR", str(tmp_path))
    keep(executed_notebook(), tmp_path, meta("0ff11e00"))
    path, warnings = report.render_report(find_run("0ff11e00"))
    assert warnings == []

    blocked: list[str] = []
    context = browser.new_context(viewport={"width": 1200, "height": 900})

    def only_files(route) -> None:
        url = route.request.url
        if url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()
    context.route("**/*", only_files)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    started = time.monotonic()
    page.goto(path.as_uri())

    banner = page.locator(".casera-banner")
    assert banner.inner_text().strip() == "SUCCEEDED"
    assert banner.get_attribute("data-status") == "succeeded"
    assert page.locator("svg.casera-timeline g.casera-step").count() == 3
    assert page.locator("svg.casera-timeline rect").first.bounding_box()["width"] > 0
    # The widget manager (inlined) renders the slider from the stored state.
    slider = page.locator(".widget-slider")
    slider.first.wait_for(timeout=15_000)
    assert page.locator(".widget-readout").first.inner_text().strip() == "7"
    assert "replicas" in slider.first.inner_text()
    took = time.monotonic() - started
    shot = screenshot(page, "report-offline", full_page=True)
    print(f"report rendered offline in {took:.1f}s; screenshot {shot}")
    assert errors == [], errors
    # Nothing tried to reach the network (a CDN fallback would show here).
    assert blocked == [], blocked
    context.close()
