"""The interactive gate in front of every destructive step.

In JupyterLab it shows the plan and waits for a click; headless it proceeds only when the run
was started with ``--approve`` or the environment's params say ``runner.approval: auto`` (the
local cloud), and otherwise raises :class:`ApprovalRefused`, which the runner records as
status ``refused``.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from casera.context import RunContext
from casera.errors import ApprovalRefused


def _wait_for_click(title: str, plan: list[str], timeout: float) -> bool:
    # Imported here: only an interactive kernel with a frontend needs widgets.
    import ipywidgets as widgets
    from IPython.display import display
    from jupyter_ui_poll import ui_events

    decision: dict[str, bool] = {}
    approve = widgets.Button(description="Approve", button_style="danger")
    refuse = widgets.Button(description="Refuse")
    approve.on_click(lambda _: decision.setdefault("approved", True))
    refuse.on_click(lambda _: decision.setdefault("approved", False))
    display(widgets.VBox([widgets.HTML(f"<b>{title}</b>"),
                          widgets.HTML("<pre>" + "\n".join(plan) + "</pre>"),
                          widgets.HBox([approve, refuse])]))
    # The cell is still executing while we wait, so widget events must be pumped by hand.
    deadline = time.monotonic() + timeout
    with ui_events() as poll, tqdm(total=int(timeout), desc="waiting for approval", unit="s",
                                   file=sys.stdout, leave=False) as bar:
        while "approved" not in decision and time.monotonic() < deadline:
            poll(10)
            time.sleep(0.2)
            bar.n = int(timeout - (deadline - time.monotonic()))
            bar.refresh()
    approve.disabled = refuse.disabled = True
    return decision.get("approved", False)


def confirm(ctx: RunContext, title: str, plan: list[str], timeout: float = 1800) -> str:
    """Stop unless this destructive change is approved. Returns how it was approved."""
    print(title)
    for line in plan:
        print(f"  {line}")
    if not plan:
        return "nothing to approve: the plan is empty"
    if ctx.dry_run:
        return "dry run: shown, not applied"
    if ctx.params.runner.approval == "auto":
        return f"approved automatically (params/{ctx.env}.yaml runner.approval: auto)"
    if ctx.approve:
        return f"approved by --approve (operator {ctx.operator})"
    if ctx.interactive:
        if _wait_for_click(title, plan, timeout):
            return f"approved by click (operator {ctx.operator})"
        raise ApprovalRefused(f"{title}: refused in the notebook (or no click within "
                              f"{timeout:.0f}s); nothing was changed")
    raise ApprovalRefused(
        f"{title}: needs approval and this run is headless; nothing was changed. "
        f"Re-run with --approve after reading the plan above, or step through it in JupyterLab"
    )
