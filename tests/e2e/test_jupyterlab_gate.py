"""An operator steps through the real bootstrap runbook in JupyterLab on the local cloud and
answers a real gate: the firewall step, asked to remove a rule the params do not have.

Runs after tests/e2e/test_bootstrap.py on the converged local cloud, and leaves it converged.
A stray inbound rule is added to the cluster firewall through the Hetzner API; the runbook,
opened with ``overrides = {"runner.approval": "required"}`` (local says ``auto``), then:
- takes the env lock in its first cell (``casera lock`` names the interactive run);
- *Cancel* at the firewall gate: ApprovalRefused, the stray rule still there;
- the same cell again, *Approve*: the rule is gone, the firewall has exactly the params' rules;
- the last cell keeps the scrubbed executed copy (mode interactive, the operator) and
  releases the lock.
Cells are run one at a time, as an operator does (see lab_harness.run_cell).
Screenshots go to the test's folder (and to $CASERA_SCREENSHOTS).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from e2e_harness import hcloud
from hcloud.firewalls import FirewallRule
from lab_harness import chromium, jupyterlab, open_notebook, run_cell, wait_cell

from casera.params import load_params
from casera.paths import outputs_dir, runbook_file
from casera_localcloud.local_credentials import read_local_secrets

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]
STRAY = FirewallRule(direction="in", protocol="tcp", port="2222",
                     source_ips=["203.0.113.7/32"], description="e2e stray rule")


def firewall_rules() -> list[tuple[str, str, str | None, tuple[str, ...]]]:
    fw = hcloud().firewalls.get_by_name(load_params("local").firewall.name)
    assert fw is not None, "no cluster firewall: run tests/e2e/test_bootstrap.py first"
    return sorted((r.direction, r.protocol, r.port, tuple(sorted(r.source_ips or [])))
                  for r in fw.rules or [])


def lock_holder() -> str:
    done = subprocess.run([sys.executable, "-m", "casera.runner.cli", "lock", "--env", "local"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def cell_index(nb: nbformat.NotebookNode, text: str) -> int:
    found = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and text in c.source]
    assert found, f"no code cell calling {text!r} in the bootstrap runbook"
    return found[0]


@pytest.fixture()
def stray_rule() -> Iterator[None]:
    client = hcloud()
    fw = client.firewalls.get_by_name(load_params("local").firewall.name)
    assert fw is not None, "no cluster firewall: run tests/e2e/test_bootstrap.py first"
    before = list(fw.rules or [])
    for action in client.firewalls.set_rules(fw, before + [STRAY]):
        action.wait_until_finished()
    try:
        yield
    finally:
        # Converged again whatever happened (the next e2e module expects it).
        fw = client.firewalls.get_by_name(fw.name)
        for action in client.firewalls.set_rules(fw, before):
            action.wait_until_finished()


@pytest.fixture()
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def test_cancel_then_approve_the_firewall_gate(stray_rule: None, browser: Any,
                                               tmp_path: Path) -> None:
    stray = ("in", "tcp", "2222", ("203.0.113.7/32",))
    assert stray in firewall_rules()
    nb = nbformat.read(runbook_file("bootstrap"), as_version=4)
    params_cell = next(i for i, c in enumerate(nb.cells)
                       if "parameters" in c.metadata.get("tags", []))
    nb.cells[params_cell].source = nb.cells[params_cell].source.replace(
        "overrides = {}", 'overrides = {"runner.approval": "required"}')
    assert "runner.approval" in nb.cells[params_cell].source
    start, firewall = cell_index(nb, "start_run("), cell_index(nb, "ensure_firewall(ctx)")
    end = cell_index(nb, "end_run(ctx)")

    def shot(page: Any, name: str) -> None:
        path = tmp_path / f"e2e-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if os.environ.get("CASERA_SCREENSHOTS"):
            Path(os.environ["CASERA_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(os.environ["CASERA_SCREENSHOTS"]) / path.name)

    kept_before = set((outputs_dir("local") / "bootstrap").glob("*.ipynb"))
    started = time.monotonic()
    with jupyterlab(tmp_path, {"CASERA_APPROVAL_TIMEOUT_S": "180",
                               "CASERA_OPERATOR": "e2e-operator"}) as lab:
        nbformat.write(nb, lab.work / "bootstrap.ipynb")
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        open_notebook(page, lab.url("bootstrap.ipynb"))
        run_cell(page, params_cell)
        run_cell(page, start, wait_s=120)
        holder = lock_holder()
        assert "e2e-operator" in holder and "bootstrap" in holder, holder

        # Cancel: the step stops, the rule stays.
        run_cell(page, firewall, wait_s=None)
        cell = page.locator(".jp-Notebook .jp-Cell").nth(firewall)
        cell.locator(".widget-button", has_text="Cancel").wait_for(timeout=120_000)
        assert "remove 1 rule" in cell.inner_text()
        shot(page, "gate-waiting")
        cell.locator(".widget-button", has_text="Cancel").click()
        cell.locator(".jp-OutputArea-output", has_text="ApprovalRefused").wait_for(
            timeout=60_000)
        wait_cell(page, firewall)
        assert "nothing was changed" in cell.inner_text()
        assert stray in firewall_rules()

        # The same cell again, Approve: the stray rule is removed.
        run_cell(page, firewall, wait_s=None)
        cell.locator(".widget-button:not([disabled])", has_text="Approve").wait_for(
            timeout=120_000)
        cell.locator(".widget-button:not([disabled])", has_text="Approve").click()
        wait_cell(page, firewall, wait_s=180)
        assert "ApprovalRefused" not in cell.inner_text()
        assert stray not in firewall_rules()
        shot(page, "gate-approved")

        run_cell(page, end, wait_s=120)
        assert "not locked" in lock_holder()
        [kept] = set((outputs_dir("local") / "bootstrap").glob("*.ipynb")) - kept_before
        assert f"kept {kept}" in page.locator(".jp-Notebook .jp-Cell").nth(end).inner_text()
        text = kept.read_text()
        m = json.loads(text)["metadata"]["casera"]
        assert m["mode"] == "interactive" and m["operator"] == "e2e-operator", m
        # Cancelled, then the same cell approved: the run succeeded; the refusal is kept.
        assert m["status"] == "succeeded" and "ApprovalRefused" in text, m
        assert "firewall" in [s["step"] for s in m["steps"]], m["steps"]
        for name, value in read_local_secrets().items():
            assert len(value) < 4 or value not in text, f"{name} leaked into {kept}"
        page.close()
    print(f"e2e JupyterLab gate: {time.monotonic() - started:.0f}s")
