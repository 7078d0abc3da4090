"""One result type for every step: what it found, what it changed, and the checks it made.

Same fields everywhere (step, target, changed, diff, reason, checks, duration), rendered as a
text table in executed notebooks and as HTML in JupyterLab. ``changed`` is a count, so the
runner can sum a run's changes and say "0 changes" on a converged environment.

A red check fails its step, structurally: :func:`timed`, which every step wraps itself in,
journals the result and then raises :class:`ChecksFailed` when any check is red, so no cell has
to remember to ask. What is only information (a version, a setting, a price) is a
:meth:`StepResult.note`: it has no ``ok`` to get wrong and renders as ``[info]``.
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Literal

from casera.errors import StepFailed

JOURNAL_ENV = "CASERA_RUN_JOURNAL"
# Set while a step runs inside another (check mode): its result is the outer step's input,
# not a step of the run, so it is neither journaled nor shown.
_UNRECORDED: ContextVar[bool] = ContextVar("casera_unrecorded", default=False)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    # "check" can be red; "info" is a finding that cannot fail (its ok is always True).
    kind: Literal["check", "info"] = "check"

    @property
    def failed(self) -> bool:
        return self.kind == "check" and not self.ok

    def mark(self) -> str:
        if self.kind == "info":
            return "info"
        return " ok " if self.ok else "FAIL"


class ChecksFailed(StepFailed):
    """A step's checks are red. Carries the result, so the runner and a reader of the
    traceback both see which step and which checks."""

    def __init__(self, result: StepResult) -> None:
        self.result = result
        failed = result.failed_checks
        lines = "; ".join(f"{c.name}: {c.detail}" if c.detail else c.name for c in failed)
        super().__init__(f"{result.step} {result.target}: {len(failed)} check(s) failed: "
                         f"{lines}\n{result}")


@dataclass
class StepResult:
    step: str
    target: str
    changed: int = 0
    diff: list[str] = field(default_factory=list)
    reason: str = ""
    checks: list[Check] = field(default_factory=list)
    dry_run: bool = False
    duration_s: float = 0.0

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    @property
    def ok(self) -> bool:
        return not self.failed_checks

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """A verification that can be red. Pass what was measured, never a constant: a
        finding that cannot be wrong is a :meth:`note`."""
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def note(self, name: str, detail: str) -> None:
        """Information for the reader (a version, a setting, a price): cannot fail."""
        self.checks.append(Check(name, True, detail, kind="info"))

    def raise_for_failed_checks(self) -> StepResult:
        """For results not made inside :func:`timed` (a summary); a timed step raises alone."""
        if self.failed_checks:
            raise ChecksFailed(self)
        return self

    def headline(self) -> str:
        if self.dry_run:
            state = (f"dry run, would change {self.changed}" if self.changed
                     else "dry run, no change")
        elif self.changed:
            state = f"{self.changed} change{'s' if self.changed != 1 else ''}"
        else:
            state = "0 changes"
        why = f" ({self.reason})" if self.reason else ""
        red = len(self.failed_checks)
        status = f", {red} CHECK{'S' if red != 1 else ''} FAILED" if red else ""
        return f"{self.step} {self.target}: {state}{status}{why}   {self.duration_s:.1f} s"

    def checks_text(self, details: bool = True) -> str:
        """The checks alone, one per line; without details it is stable text nbval can compare."""
        width = max((len(c.name) for c in self.checks), default=0)
        return "\n".join(
            f"[{c.mark()}] {c.name.ljust(width)}  {c.detail if details else ''}".rstrip()
            for c in self.checks
        )

    def __str__(self) -> str:
        lines = [self.headline()] + [f"  {line}" for line in self.diff]
        if self.checks:
            lines += ["  " + line for line in self.checks_text().splitlines()]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        marks = {"info": ("grey", "ℹ"), "ok": ("green", "✔"), "failed": ("red", "✘")}

        def row(c: Check) -> str:
            color, mark = marks["info" if c.kind == "info" else "ok" if c.ok else "failed"]
            return (f"<tr><td style='color:{color}'>{mark}</td><td>{html.escape(c.name)}</td>"
                    f"<td style='color:{color if c.kind == 'info' else 'inherit'}'>"
                    f"{html.escape(c.detail)}</td></tr>")

        rows = "".join(row(c) for c in self.checks)
        diff = "".join(f"<div><code>{html.escape(d)}</code></div>" for d in self.diff)
        table = f"<table>{rows}</table>" if rows else ""
        color = "red" if self.failed_checks else "inherit"
        return (f"<div><b style='color:{color}'>{html.escape(self.headline())}</b>{diff}"
                f"{table}</div>")

    def to_record(self) -> dict[str, object]:
        record = asdict(self)
        record["ok"] = self.ok
        return record


@contextmanager
def unrecorded() -> Iterator[None]:
    """Steps called inside are not journaled nor shown: for a step that runs another as its
    input (health's drift check runs an ensure step in check mode)."""
    token = _UNRECORDED.set(True)
    try:
        yield
    finally:
        _UNRECORDED.reset(token)


def record(result: StepResult) -> StepResult:
    """Append the result to the run journal the runner reads into the notebook's metadata."""
    path = os.environ.get(JOURNAL_ENV)
    if path and not _UNRECORDED.get():
        with open(path, "a") as journal:
            journal.write(json.dumps(result.to_record()) + "\n")
    return result


def _show(result: StepResult) -> None:
    """Show the red table in the cell before the traceback, as a returned result would be."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is not None:
        display(result)


@contextmanager
def timed(result: StepResult) -> Iterator[StepResult]:
    """Fill ``duration_s`` and journal the result, whether the step finished or raised; then
    fail the step (:class:`ChecksFailed`) if any of its checks is red."""
    start = time.monotonic()
    try:
        yield result
    finally:
        result.duration_s = time.monotonic() - start
        record(result)
    if result.failed_checks:
        if not _UNRECORDED.get():
            _show(result)
        raise ChecksFailed(result)
