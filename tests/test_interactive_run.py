"""An interactive run (JupyterLab, nbval, any kernel the runner did not start) is kept like a
headless one: a real Jupyter kernel runs cells one at a time as an operator does, then
``end_run`` keeps the scrubbed executed copy with ``metadata.casera`` (mode interactive)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from runner_helpers import PLANTED, assert_no_planted_secret, hcloud, outputs
from test_runner import GREEN_STEP, META_FIELDS, RED_STEP

from casera.operator_secrets import MASK
from casera.runner.lock import LockHolder, lock_name

GREEN_ON_2 = GREEN_STEP.replace("casera-local-1", "casera-local-2")


def lock_holder(url: str) -> LockHolder | None:
    found = hcloud(url).firewalls.get_by_name(lock_name("local"))
    return LockHolder.from_labels(found.labels) if found else None


@pytest.fixture()
def kernel(project: Path) -> Iterator[Any]:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(project / "runbooks"))
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def run(kc: Any, code: str, ok: bool = True) -> str:
    texts: list[str] = []

    def collect(msg: dict) -> None:
        content = msg["content"]
        texts.append(content.get("text", "") + json.dumps(content.get("data", {}))
                     + "\n".join(content.get("traceback", [])))

    reply = kc.execute_interactive(code, timeout=120, output_hook=collect)
    assert (reply["content"]["status"] == "ok") is ok, (code, reply["content"], texts)
    return "".join(texts)


def test_end_run_keeps_the_cells_as_run_scrubbed_with_the_headless_metadata(
        project: Path, hetzner_url: str, kernel: Any) -> None:
    # JupyterLab names the notebook in __session__; the run is named after it.
    run(kernel, f"__session__ = {str(project / 'runbooks' / 'drill.ipynb')!r}")
    start = "from casera.context import start_run\nctx = start_run('local')\nctx.run_id"
    run(kernel, start)
    holder = lock_holder(hetzner_url)
    assert holder is not None and holder.runbook == "drill"
    shown = run(kernel, "print('pw', ctx.secrets.get('db_password').reveal())")
    assert PLANTED["CASERA_DB_PASSWORD"] not in shown and MASK in shown
    run(kernel, GREEN_ON_2)
    run(kernel, RED_STEP, ok=False)
    run(kernel, GREEN_ON_2)  # the same cell again: recorded twice
    said = run(kernel, "from casera.context import end_run\nprint(end_run(ctx))")
    assert lock_holder(hetzner_url) is None, "end_run did not release the lock"

    [kept] = outputs(project, "local", "drill")
    assert f"drill on local: failed (0 changes, interactive, operator test-operator) -> " \
           f"kept {kept}" in said
    assert_no_planted_secret(kept)
    nb = nbformat.read(kept, as_version=4)
    m = nb.metadata["casera"]
    assert META_FIELDS <= set(m)
    assert m["mode"] == "interactive" and m["operator"] == "test-operator"
    assert m["runbook"] == "drill" and m["env"] == "local" and m["run_id"] == holder.run_id
    assert m["status"] == "failed" and len(m["git_commit"]) == 40
    assert [(s["step"], s["target"]) for s in m["steps"]] == [
        ("disk", "casera-local-2"), ("disk", "casera-local-1"), ("disk", "casera-local-2")]
    assert [(c["target"], c["check"]) for c in m["failed_checks"]] == [
        ("casera-local-1", "free space")]
    assert m["error"].startswith("ChecksFailed: disk casera-local-1: 1 check(s) failed")
    assert m["parameters"]["params"]["hetzner"]["server_count"] == 3
    banner, *cells = nb.cells
    assert banner.metadata["tags"] == ["casera-status"] and "FAILED" in banner.source
    assert "(interactive)" in banner.source
    # Every cell as it was run, in order, from start_run on (the __session__ cell came before).
    assert [c.source for c in cells] == [
        start, "print('pw', ctx.secrets.get('db_password').reveal())", GREEN_ON_2, RED_STEP,
        GREEN_ON_2, "from casera.context import end_run\nprint(end_run(ctx))"]
    counts = [c.execution_count for c in cells[:-1]]
    assert counts == sorted(counts) and len(set(counts)) == len(counts), counts
    assert m["failed_cell"] == 4 and nb.cells[4].source == RED_STEP
    assert cells[0].outputs[0].output_type == "execute_result"
    assert cells[0].outputs[0].data["text/plain"] == repr(holder.run_id)
    assert cells[1].outputs == [nbformat.from_dict(
        {"output_type": "stream", "name": "stdout", "text": f"pw {MASK}\n"})]
    [error] = [o for o in cells[3].outputs if o.output_type == "error"]
    assert error.ename == "ChecksFailed" and "free space" in error.evalue
    assert any("free space" in line for line in error.traceback)
    assert all(o.output_type != "error" for c in cells if c is not cells[3] for o in c.outputs)


def test_a_leak_keeps_nothing_and_a_refusal_is_kept_as_refused(
        project: Path, hetzner_url: str, kernel: Any) -> None:
    run(kernel, "from casera.context import start_run, end_run\nctx = start_run('local')")
    # Typed by the operator into a cell: base64 of "u:<secret>", a form no scrub can mask
    # without corrupting the blob (casera.runner.scrub), so the copy must not be kept.
    blob = base64.b64encode(b"u:" + PLANTED["CASERA_DB_PASSWORD"].encode()).decode()
    run(kernel, f"header = {blob!r}")
    said = run(kernel, "print(end_run(ctx))")
    assert "output not kept, secrets remain after scrubbing" in said
    assert "base64 inside a larger blob" in said and blob not in said
    assert PLANTED["CASERA_DB_PASSWORD"] not in said
    assert outputs(project, "local", "interactive") == []
    assert lock_holder(hetzner_url) is None

    # A new run in the same kernel: a gate cancelled, then the run ended.
    run(kernel, "ctx = start_run('local')")
    run(kernel, "from casera.errors import ApprovalRefused\n"
                "raise ApprovalRefused('cancelled in the notebook; nothing was changed')",
        ok=False)
    said = run(kernel, "print(end_run(ctx))")
    [kept] = outputs(project, "local", "interactive")
    m = json.loads(kept.read_text())["metadata"]["casera"]
    assert m["status"] == "refused" and m["mode"] == "interactive"
    assert m["error"] == "ApprovalRefused: cancelled in the notebook; nothing was changed"
    assert "interactive on local: refused" in said
    # The leaked run's cells are not part of this one.
    assert blob[:8] not in kept.read_text() and "header =" not in kept.read_text()
