"""The interactive gate in front of every destructive step.

In JupyterLab it shows the plan and waits for an *Approve* or *Cancel* click; headless it
proceeds only when the run was started with ``--approve`` or the environment's params say
``runner.approval: auto`` (the local cloud), and otherwise raises :class:`ApprovalRefused`,
which the runner records as status ``refused``. *Cancel*, and a gate left unanswered for
``timeout`` seconds, refuse the same way: nothing is changed.

The click reaches a cell that is still running only because jupyter-ui-poll pumps the
kernel's messages by hand with ``Kernel.do_one_iteration``. ipykernel 7 removed that method
and ui-poll swallows the error, so a click would never arrive
(https://github.com/Kirill888/jupyter-ui-poll/issues/54): pyproject.toml pins ipykernel<7,
and a kernel without the method is refused at once, before the plan waits for nothing.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from casera.context import RunContext
from casera.errors import ApprovalRefused

# How long a gate waits for a click when the caller does not say; the operator can change it
# per session (a short one for a demo, a long one for a change window).
TIMEOUT_ENV = "CASERA_APPROVAL_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0


def approval_timeout(timeout: float | None = None) -> float:
    """The gate's timeout: the argument, else ``$CASERA_APPROVAL_TIMEOUT_S``, else 30 min."""
    if timeout is not None:
        value: Any = timeout
        source = "timeout argument"
    else:
        value = os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
        source = f"environment variable {TIMEOUT_ENV}"
    try:
        seconds = float(value)
    except ValueError:
        raise ApprovalRefused(f"{source} is {value!r}, not a number of seconds; set it to "
                              f"e.g. 600. Nothing was changed") from None
    if seconds <= 0:
        raise ApprovalRefused(f"{source} is {seconds:g}; it must be a positive number of "
                              f"seconds. Nothing was changed")
    return seconds


@dataclass
class GateWidgets:
    """The gate as shown in the notebook; ``decision`` is set by the first click."""

    box: Any
    approve: Any
    cancel: Any
    status: Any
    decision: dict[str, str] = field(default_factory=dict)


def plan_html(title: str, plan: list[str]) -> str:
    """The plan as HTML; every line is escaped (names come from the cloud, not from us)."""
    lines = "\n".join(html.escape(line) for line in plan)
    return f"<b>{html.escape(title)}</b><pre>{lines}</pre>"


def gate_widgets(title: str, plan: list[str]) -> GateWidgets:
    # Imported here: only an interactive kernel with a frontend needs widgets.
    import ipywidgets as widgets

    approve = widgets.Button(description="Approve", button_style="danger",
                             tooltip="make the changes listed above")
    cancel = widgets.Button(description="Cancel", tooltip="stop here; nothing is changed")
    status = widgets.HTML("")
    gate = GateWidgets(box=widgets.VBox([widgets.HTML(plan_html(title, plan)),
                                         widgets.HBox([approve, cancel]), status]),
                       approve=approve, cancel=cancel, status=status)
    approve.on_click(lambda _: gate.decision.setdefault("answer", "approved"))
    cancel.on_click(lambda _: gate.decision.setdefault("answer", "cancelled"))
    return gate


def wait_for_decision(gate: GateWidgets, timeout: float, pump: Callable[[], None],
                      clock: Callable[[], float] = time.monotonic) -> str:
    """Pump events until a click or ``timeout``; ``approved``, ``cancelled`` or ``timed out``.

    The status line counts down in the widget, not with a ``\\r`` progress bar, so the kept
    notebook shows one line saying how the gate ended.
    """
    deadline = clock() + timeout
    shown = -1
    while "answer" not in gate.decision:
        left = deadline - clock()
        if left <= 0:
            gate.decision["answer"] = "timed out"
            break
        if int(left) // 10 != shown:
            shown = int(left) // 10
            gate.status.value = (f"waiting for a click: {left:.0f} s left, then the step is "
                                 f"refused and nothing is changed")
        pump()
    answer = gate.decision["answer"]
    gate.approve.disabled = gate.cancel.disabled = True
    gate.status.value = html.escape(f"{answer} at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    return answer


def _check_kernel() -> None:
    """Refuse a kernel ui-poll cannot pump, at once instead of after the timeout."""
    from IPython import get_ipython

    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        raise ApprovalRefused("this Python has no Jupyter kernel to show the gate in; run it "
                              "in JupyterLab or with `casera run ... --approve`. Nothing was "
                              "changed")
    if not hasattr(kernel, "do_one_iteration"):
        import ipykernel

        raise ApprovalRefused(
            f"ipykernel {ipykernel.__version__} cannot deliver a click to a running cell "
            f"(no Kernel.do_one_iteration, which jupyter-ui-poll needs: "
            f"https://github.com/Kirill888/jupyter-ui-poll/issues/54). Install the project's "
            f"pinned set (`make install`, which keeps ipykernel<7) and restart the kernel. "
            f"Nothing was changed")


def _wait_for_click(title: str, plan: list[str], timeout: float) -> str:
    from IPython.display import display
    from jupyter_ui_poll import ui_events

    _check_kernel()
    gate = gate_widgets(title, plan)
    display(gate.box)
    with ui_events() as poll:
        def pump() -> None:
            poll(10)
            time.sleep(0.1)

        return wait_for_decision(gate, timeout, pump)


def confirm(ctx: RunContext, title: str, plan: list[str], timeout: float | None = None) -> str:
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
        seconds = approval_timeout(timeout)
        answer = _wait_for_click(title, plan, seconds)
        if answer == "approved":
            return f"approved by click (operator {ctx.operator})"
        why = ("cancelled in the notebook" if answer == "cancelled"
               else f"no click within {seconds:g}s ({TIMEOUT_ENV} sets the limit)")
        raise ApprovalRefused(f"{title}: {why}; nothing was changed")
    raise ApprovalRefused(
        f"{title}: needs approval and this run is headless; nothing was changed. "
        f"Re-run with --approve after reading the plan above, or step through it in JupyterLab"
    )
