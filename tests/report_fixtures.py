"""Kept runs for the report tests: a real notebook executed by a real kernel (so its widget
state is what nbclient stores), with the ``metadata.casera`` a run keeps."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

CODE = """\
import ipywidgets as widgets
from IPython.display import display
display(widgets.IntSlider(value=7, min=0, max=10, description="replicas"))
print("servers: 3 ready")
"""

# A 1x1 red PNG: an image output the report must embed, not link.
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAA"
       "AABJRU5ErkJggg==")


def steps(changed_servers: int = 2, red: bool = False) -> list[dict[str, Any]]:
    return [
        {"step": "ssh key", "target": "casera", "changed": 0, "diff": [], "reason": "",
         "checks": [{"name": "key matches", "ok": True, "detail": "", "kind": "check"}],
         "dry_run": False, "duration_s": 0.4, "ok": True},
        {"step": "servers", "target": "local", "changed": changed_servers,
         "diff": [f"+ server casera-{i}" for i in range(1, changed_servers + 1)],
         "reason": "", "dry_run": False, "duration_s": 12.5, "ok": not red,
         "checks": [{"name": "all running", "ok": not red,
                     "detail": "3/3" if not red else "2/3 running", "kind": "check"},
                    {"name": "image", "ok": True, "detail": "docker-ce", "kind": "info"}]},
        {"step": "firewall", "target": "casera-fw", "changed": 1, "diff": ["~ rule 22/tcp"],
         "reason": "", "checks": [], "dry_run": False, "duration_s": 1.1, "ok": True},
    ]


def meta(run_id: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "run_id": run_id, "runbook": "bootstrap", "env": "local",
        "operator": "ana <ops>", "host": "ci-1", "git_commit": "0123456789abcdef",
        "git_dirty": False, "version": "0.1.0",
        "parameters": {"runbook": {}, "overrides": {"services.api.replicas": 3},
                       "dry_run": False, "approve": True, "params": {"env": "local"}},
        "start": "2026-12-01T10:00:00+00:00", "end": "2026-12-01T10:00:14+00:00",
        "duration_s": 14.0, "cell_timeout_s": 1800, "status": "succeeded",
        "failed_step": None, "failed_cell": None, "error": None, "failed_checks": [],
        "steps": steps(),
    }
    base.update(changes)
    base["changes"] = sum(int(s["changed"]) for s in base["steps"])
    return base


def executed_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Bootstrap\nWhy: build the cluster."),
                nbformat.v4.new_code_cell(CODE),
                nbformat.v4.new_code_cell("from IPython.display import Image, display\n"
                                          "import base64\n"
                                          f"display(Image(base64.b64decode('{PNG}')))")]
    NotebookClient(nb, timeout=60, kernel_name="python3", store_widget_state=True).execute()
    assert "widgets" in nb.metadata, "nbclient stored no widget state"
    return nb


def keep(nb: nbformat.NotebookNode, root: Path, run_meta: dict[str, Any]) -> Path:
    """Write it as the runner keeps a run: outputs/<env>/<runbook>/<time>-<id>.ipynb."""
    kept = copy.deepcopy(nb)
    kept.metadata["casera"] = run_meta
    stamp = run_meta["start"][:19].replace("-", "").replace(":", "")
    path = (root / "outputs" / run_meta["env"] / run_meta["runbook"]
            / f"{stamp}Z-{run_meta['run_id']}.ipynb")
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(kept, path)
    return path
