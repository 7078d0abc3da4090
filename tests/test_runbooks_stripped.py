"""Source runbooks stay stripped: outputs belong in outputs/<env>/, never in runbooks/.

A save from JupyterLab writes outputs, execution counts and widget state into the file;
`make install` sets up nbstripout as a git filter for runbooks/*.ipynb so they are not
committed, and this test fails CI (and `make test` on a working copy) when one got through.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RUNBOOKS = Path(__file__).resolve().parents[1] / "runbooks"


def unstripped(nb: dict) -> list[str]:
    """What a source notebook holds that only an executed copy may hold."""
    found = []
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            found.append(f"cell {index}: {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            found.append(f"cell {index}: execution count {cell['execution_count']}")
    if "widgets" in nb.get("metadata", {}):
        found.append("metadata.widgets (saved widget state)")
    if "casera" in nb.get("metadata", {}):
        found.append("metadata.casera (an executed run's record)")
    return found


def test_there_are_runbooks() -> None:
    assert len(list(RUNBOOKS.glob("*.ipynb"))) >= 2


@pytest.mark.parametrize("path", sorted(RUNBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_source_runbook_has_no_outputs(path: Path) -> None:
    found = unstripped(json.loads(path.read_text()))
    assert not found, (f"{path.relative_to(RUNBOOKS.parent)} holds outputs ({'; '.join(found)})."
                       f" Fix: nbstripout {path.relative_to(RUNBOOKS.parent)} (make install "
                       f"sets it up as a git filter so saves from JupyterLab are not committed)")


def test_the_check_finds_a_saved_notebook() -> None:
    source = json.loads(sorted(RUNBOOKS.glob("*.ipynb"))[0].read_text())
    assert unstripped(source) == []
    code = next(i for i, c in enumerate(source["cells"]) if c["cell_type"] == "code")
    source["cells"][code]["execution_count"] = 3
    source["cells"][code]["outputs"] = [{"output_type": "stream", "name": "stdout",
                                         "text": "env local\n"}]
    source["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    assert unstripped(source) == [f"cell {code}: 1 output(s)",
                                  f"cell {code}: execution count 3",
                                  "metadata.widgets (saved widget state)"]


def test_nbstripout_strips_what_the_check_finds(tmp_path: Path) -> None:
    """The git filter make install sets up does remove what this test refuses."""
    import subprocess
    import sys

    source = json.loads(sorted(RUNBOOKS.glob("*.ipynb"))[0].read_text())
    code = next(i for i, c in enumerate(source["cells"]) if c["cell_type"] == "code")
    source["cells"][code].update(execution_count=1, outputs=[
        {"output_type": "stream", "name": "stdout", "text": "x\n"}])
    source["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    dirty = json.dumps(source)
    # As git runs a clean filter: the file on stdin, the committed form on stdout.
    clean = subprocess.run([sys.executable, "-m", "nbstripout"], input=dirty, text=True,
                           capture_output=True, check=True).stdout
    assert unstripped(json.loads(clean)) == []
