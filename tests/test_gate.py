"""The approval gate without a browser: real ipywidgets buttons, clicked through their own
``click()`` (what the frontend's message ends in); tests/browser clicks them in JupyterLab."""

from __future__ import annotations

from pathlib import Path

import pytest

from casera import gate
from casera.context import RunContext
from casera.errors import ApprovalRefused
from casera.operator_secrets import SecretStore
from casera.params import load_params
from casera.plan import Plan, apply
from casera.result import StepResult

REPO = Path(__file__).resolve().parents[1]


def interactive_ctx() -> RunContext:
    secrets = SecretStore("local", environ={}, file=Path("/nonexistent/local.env"))
    params = load_params("local", overrides={"runner": {"approval": "required"}},
                         path=REPO / "params" / "local.yaml", secrets=secrets)
    return RunContext(env="local", params=params, secrets=secrets, interactive=True,
                      run_id="gate-test", operator="tester")


def clicking(button_name: str, after_pumps: int = 2):
    """A stand-in for JupyterLab: shows the gate, then clicks one of its buttons."""
    def wait(title: str, plan: list[str], timeout: float) -> str:
        shown = gate.gate_widgets(title, plan)
        pumps = []

        def pump() -> None:
            pumps.append(1)
            if len(pumps) == after_pumps:
                getattr(shown, button_name).click()
        answer = gate.wait_for_decision(shown, timeout, pump)
        assert shown.approve.disabled and shown.cancel.disabled
        return answer
    return wait


def a_plan(made: list[str]) -> Plan:
    plan = Plan(gate_title="delete server <b>web-1</b>")
    plan.add("- server web-1", lambda: made.append("deleted web-1"), destructive=True)
    plan.add("+ server web-2", lambda: made.append("created web-2"))
    return plan


def test_plan_is_escaped_as_html() -> None:
    html = gate.plan_html("delete <b>x</b>", ["- server <script>alert(1)</script> & co"])
    assert "<script>" not in html and "<b>x</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html
    shown = gate.gate_widgets("t", ["<img src=x onerror=alert(1)>"])
    assert "<img" not in shown.box.children[0].value
    assert [b.description for b in shown.box.children[1].children] == ["Approve", "Cancel"]


def test_approve_click_makes_the_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate, "_wait_for_click", clicking("approve"))
    made: list[str] = []
    applied = apply(interactive_ctx(), StepResult("servers", "local"), a_plan(made))
    assert made == ["deleted web-1", "created web-2"]
    assert applied.changed_something


def test_cancel_refuses_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate, "_wait_for_click", clicking("cancel"))
    made: list[str] = []
    with pytest.raises(ApprovalRefused, match="cancelled in the notebook; nothing was changed"):
        apply(interactive_ctx(), StepResult("servers", "local"), a_plan(made))
    assert made == []


def test_unanswered_gate_times_out_as_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gate.TIMEOUT_ENV, "0.3")
    monkeypatch.setattr(gate, "_wait_for_click", clicking("approve", after_pumps=10**9))
    made: list[str] = []
    with pytest.raises(ApprovalRefused, match=r"no click within 0.3s .*CASERA_APPROVAL_TIMEOUT_S"):
        apply(interactive_ctx(), StepResult("servers", "local"), a_plan(made))
    assert made == []


def test_wait_reports_time_out_with_its_own_clock() -> None:
    shown = gate.gate_widgets("t", ["- x"])
    now = [0.0]

    def pump() -> None:
        now[0] += 7.0
    assert gate.wait_for_decision(shown, 20, pump, clock=lambda: now[0]) == "timed out"
    assert now[0] == 21.0
    assert shown.status.value.startswith("timed out at ")


@pytest.mark.parametrize("value, message", [("soon", "not a number"), ("0", "positive")])
def test_bad_timeout_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str,
                                         message: str) -> None:
    monkeypatch.setenv(gate.TIMEOUT_ENV, value)
    with pytest.raises(ApprovalRefused, match=f"{gate.TIMEOUT_ENV}.*{message}"):
        gate.approval_timeout()
    assert gate.approval_timeout(5) == 5.0


def test_without_a_kernel_the_gate_refuses_at_once() -> None:
    with pytest.raises(ApprovalRefused, match="no Jupyter kernel"):
        gate.confirm(interactive_ctx(), "delete x", ["- x"], timeout=60)


def test_installed_kernel_can_deliver_clicks() -> None:
    """The pin in pyproject.toml holds in this environment (ui-poll needs this method)."""
    from ipykernel.kernelbase import Kernel
    assert hasattr(Kernel, "do_one_iteration"), "ipykernel>=7: the gate never sees a click"
