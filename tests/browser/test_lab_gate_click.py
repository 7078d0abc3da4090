"""An operator in JupyterLab: a real JupyterLab on loopback with a token, a notebook whose
cells go through the real approval gate (casera.plan.apply -> casera.gate.confirm) with a
RunContext as the tests build it (approval required, interactive), clicked in Chromium.

*Approve* must make the change; *Cancel* must stop the cell with ApprovalRefused and change
nothing. No local cloud is needed: each change writes a file, which the test then looks for.
The full runbook on the local cloud is tests/e2e's.

Not covered, because it does not work (measured with ipykernel 6.31 and jupyter-ui-poll 1.1.0):
a gate in a cell that was queued behind another waiting gate (Run All). ui-poll holds the
queued execute requests while the first gate waits and replays them after it; a gate inside
the replay never receives its click and times out as refused (nothing is changed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from lab_harness import Lab, jupyterlab, open_notebook, run_cell, wait_cell

REPO = Path(__file__).resolve().parents[2]

SETUP = f"""\
from pathlib import Path
from casera.context import RunContext
from casera.operator_secrets import SecretStore
from casera.params import load_params
from casera.plan import Plan, apply
from casera.result import StepResult

secrets = SecretStore("local", environ={{}}, file=Path("/nonexistent/local.env"))
params = load_params("local", overrides={{"runner": {{"approval": "required"}}}},
                     path=Path({str(REPO / "params" / "local.yaml")!r}), secrets=secrets)
ctx = RunContext(env="local", params=params, secrets=secrets, interactive=True,
                 run_id="browser", operator="browser-test")

def gated(marker):
    plan = Plan(gate_title=f"replace <b>{{marker}}</b>")
    plan.add(f"- file {{marker}} & <old>", lambda: Path(marker).write_text("made"),
             destructive=True)
    return apply(ctx, StepResult("files", marker), plan)
"""


@pytest.fixture()
def lab(tmp_path: Path) -> Iterator[Lab]:
    with jupyterlab(tmp_path, {"CASERA_APPROVAL_TIMEOUT_S": "90"}) as running:
        yield running


def test_approve_then_cancel_in_jupyterlab(lab: Lab, browser, screenshot,
                                           tmp_path: Path) -> None:
    work = lab.work
    approved, cancelled = work / "approved.txt", work / "cancelled.txt"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(SETUP),
                nbformat.v4.new_code_cell(f"gated({str(approved)!r})\nprint('APPROVED STEP RAN')"),
                nbformat.v4.new_code_cell(f"gated({str(cancelled)!r})\nprint('NOT REACHED')")]
    nbformat.write(nb, work / "gate.ipynb")

    started = time.monotonic()
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    open_notebook(page, lab.url("gate.ipynb"))
    run_cell(page, 0)
    run_cell(page, 1, wait_s=None)  # waits at the gate
    outputs = page.locator(".jp-Cell .jp-OutputArea-output")
    approve = page.locator(".jp-OutputArea-output .widget-button", has_text="Approve")
    try:
        approve.first.wait_for(timeout=60_000)
    except Exception:
        page.screenshot(path=str(tmp_path / "gate-never-shown.png"), full_page=True)
        raise AssertionError(f"no gate shown; outputs: {outputs.all_inner_texts()}") from None
    # The plan is shown as text, escaped: no <b> or <old> element made from it.
    gate_text = page.locator(".jp-OutputArea-output .widget-html").first.inner_text()
    assert f"replace <b>{approved}</b>" in gate_text
    assert f"- file {approved} & <old>" in gate_text
    assert not approved.exists()
    screenshot(page, "gate-waiting")
    clicked = time.monotonic()
    approve.first.click()
    page.locator(".jp-OutputArea-output", has_text="APPROVED STEP RAN").wait_for(timeout=30_000)
    click_to_output = time.monotonic() - clicked
    assert approved.read_text() == "made"

    wait_cell(page, 1)  # a cell queued behind a running gate would miss its click
    run_cell(page, 2, wait_s=None)
    cancel = page.locator(".jp-OutputArea-output .widget-button", has_text="Cancel")
    cancel.nth(1).wait_for(timeout=30_000)
    cancel.nth(1).click()
    try:
        page.locator(".jp-OutputArea-output", has_text="ApprovalRefused").wait_for(
            timeout=30_000)
    except Exception:
        page.screenshot(path=str(tmp_path / "cancel-not-seen.png"), full_page=True)
        raise AssertionError(f"no refusal shown; outputs: {outputs.all_inner_texts()}"
                             ) from None
    refused = page.locator(".jp-OutputArea-output", has_text="ApprovalRefused").inner_text()
    assert "cancelled in the notebook; nothing was changed" in refused
    assert not cancelled.exists()
    printed = [t.strip() for t in outputs.all_inner_texts()]
    assert "APPROVED STEP RAN" in printed and "NOT REACHED" not in printed
    # Both gates are closed: their buttons disabled, each saying how it ended.
    assert all(b.is_disabled() for b in page.locator(".widget-button").all())
    screenshot(page, "gate-answered", full_page=True)
    print(f"JupyterLab gate test: {time.monotonic() - started:.1f}s in the browser, click to "
          f"output {click_to_output:.1f}s; screenshots in {tmp_path}")
    page.close()
