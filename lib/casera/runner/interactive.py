"""Recording an interactive run (JupyterLab, a kernel the runner did not start) cell by cell,
so that ``casera.context.end_run`` keeps it like ``casera run`` keeps a headless one.

The kernel never sees the notebook, only the cells the operator executes, in the order they
were executed: a cell run twice is recorded twice. Its outputs are taken from the secret scrub
(``scrub.install_kernel_scrub`` taps), so what is recorded is what the operator saw, masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nbformat

IGNORED_ERRORS = ("KeyboardInterrupt",)


@dataclass
class RecordedCell:
    source: str
    cell_id: str | None
    execution_count: int | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: tuple[str, str] | None = None  # (ename, evalue)

    def notebook_cell(self) -> nbformat.NotebookNode:
        cell = nbformat.v4.new_code_cell(self.source, execution_count=self.execution_count)
        cell.outputs = [nbformat.from_dict(out) for out in self.outputs]
        return cell


class Recorder:
    """Listens to IPython's ``pre_run_cell``/``post_run_cell`` and to the scrub's taps."""

    def __init__(self) -> None:
        self.cells: list[RecordedCell] = []
        self._current: RecordedCell | None = None
        self._displays: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ IPython events
    def pre_run_cell(self, info: Any) -> None:
        self._current = RecordedCell(source=info.raw_cell,
                                     cell_id=getattr(info, "cell_id", None))
        self.cells.append(self._current)

    def post_run_cell(self, result: Any) -> None:
        if self._current is not None:
            self._current.execution_count = result.execution_count

    # ------------------------------------------------------------------ scrub taps
    def tap(self, kind: str, *payload: Any) -> None:
        # Output printed by a background thread after its cell ended belongs to that cell.
        cell = self._current
        if cell is None:
            return
        if kind == "stream":
            name, text = payload
            if not text:
                return
            last = cell.outputs[-1] if cell.outputs else None
            if last and last["output_type"] == "stream" and last["name"] == name:
                last["text"] += text
            else:
                cell.outputs.append({"output_type": "stream", "name": name, "text": text})
        elif kind == "display":
            data, args, kwargs = payload
            metadata = kwargs.get("metadata", args[0] if args else None) or {}
            display_id = (kwargs.get("transient") or {}).get("display_id")
            if kwargs.get("update") and display_id in self._displays:
                # update_display: the earlier output now shows this (a progress bar's last state).
                self._displays[display_id].update(data=dict(data), metadata=dict(metadata))
                return
            out = {"output_type": "display_data", "data": dict(data),
                   "metadata": dict(metadata)}
            cell.outputs.append(out)
            if display_id:
                self._displays[display_id] = out
        elif kind == "result":
            data, metadata = payload
            cell.outputs.append({"output_type": "execute_result", "data": dict(data),
                                 "metadata": dict(metadata or {}),
                                 "execution_count": cell.execution_count})
        elif kind == "error":
            etype, evalue, stb = payload
            ename = getattr(etype, "__name__", str(etype))
            cell.outputs.append({"output_type": "error", "ename": ename, "evalue": evalue,
                                 "traceback": list(stb)})
            cell.error = (ename, evalue)

    # ------------------------------------------------------------------ the outcome
    def final_errors(self) -> list[tuple[int, RecordedCell]]:
        """The cells whose last run failed, with their index among the recorded cells.

        A cell run again after an error (the operator fixed the cause, or cancelled a gate and
        then approved it) counts by its last run; the failed run stays in the kept notebook.
        A cell is the same cell by JupyterLab's cell id, or else by its source.
        """
        last: dict[str, int] = {}
        for index, cell in enumerate(self.cells):
            last[cell.cell_id or cell.source] = index
        return [(i, c) for i, c in enumerate(self.cells)
                if c.error and c.error[0] not in IGNORED_ERRORS
                and last[c.cell_id or c.source] == i]

    def notebook(self) -> nbformat.NotebookNode:
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        # Execute results recorded before post_run_cell knew the count.
        for cell in self.cells:
            for out in cell.outputs:
                if out["output_type"] == "execute_result" and out["execution_count"] is None:
                    out["execution_count"] = cell.execution_count
        nb.cells = [cell.notebook_cell() for cell in self.cells]
        widgets = _widget_state()
        if widgets:
            nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": widgets}
        return nb


def _widget_state() -> dict[str, Any] | None:
    """The widgets' state, as nbclient keeps it for a headless run, so the gate renders."""
    try:
        from ipywidgets import Widget
    except ImportError:
        return None
    try:
        state = Widget.get_manager_state(drop_defaults=True)
    except Exception:  # noqa: BLE001 - a missing widget state only loses the widget view
        return None
    return state if state.get("state") else None


def install(recorder: Recorder, this_cell: bool = False) -> bool:
    """Start recording this kernel's cells into ``recorder`` (replacing an earlier one).
    Needs the scrub installed first (its taps); returns False outside IPython.

    ``this_cell``: also record the cell running now (the one calling ``start_run``), whose
    ``pre_run_cell`` has passed; IPython stores a cell's input before running it."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    state = getattr(shell, "_casera_scrub", None) if shell is not None else None
    if state is None:
        return False
    old = getattr(shell, "_casera_recorder", None)
    if old is recorder:
        return True
    if old is not None:
        uninstall(old)
    if this_cell and shell.history_manager is not None:
        inputs = shell.history_manager.input_hist_raw
        if inputs and inputs[-1]:
            recorder._current = RecordedCell(source=inputs[-1], cell_id=None)
            recorder.cells.append(recorder._current)
    shell.events.register("pre_run_cell", recorder.pre_run_cell)
    shell.events.register("post_run_cell", recorder.post_run_cell)
    state["taps"].append(recorder.tap)
    shell._casera_recorder = recorder
    return True


def uninstall(recorder: Recorder) -> None:
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or getattr(shell, "_casera_recorder", None) is not recorder:
        return
    for event, callback in (("pre_run_cell", recorder.pre_run_cell),
                            ("post_run_cell", recorder.post_run_cell)):
        try:
            shell.events.unregister(event, callback)
        except ValueError:
            pass
    taps = shell._casera_scrub["taps"]
    if recorder.tap in taps:
        taps.remove(recorder.tap)
    shell._casera_recorder = None
