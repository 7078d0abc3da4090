"""One result type for every step: what it found, what it changed, and the checks it made.

Same fields everywhere (step, target, changed, diff, reason, checks, duration), rendered as a
text table in executed notebooks and as HTML in JupyterLab. ``changed`` is a count, so the
runner can sum a run's changes and say "0 changes" on a converged environment.
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from casera.errors import StepFailed

JOURNAL_ENV = "CASERA_RUN_JOURNAL"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


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
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def raise_for_failed_checks(self) -> StepResult:
        failed = [c for c in self.checks if not c.ok]
        if failed:
            lines = "; ".join(f"{c.name}: {c.detail}" for c in failed)
            raise StepFailed(f"{self.step} {self.target}: {len(failed)} check(s) failed: {lines}")
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
        return f"{self.step} {self.target}: {state}{why}   {self.duration_s:.1f} s"

    def checks_text(self, details: bool = True) -> str:
        """The checks alone, one per line; without details it is stable text nbval can compare."""
        width = max((len(c.name) for c in self.checks), default=0)
        return "\n".join(
            f"[{' ok ' if c.ok else 'FAIL'}] {c.name.ljust(width)}  "
            f"{c.detail if details else ''}".rstrip()
            for c in self.checks
        )

    def __str__(self) -> str:
        lines = [self.headline()] + [f"  {line}" for line in self.diff]
        if self.checks:
            lines += ["  " + line for line in self.checks_text().splitlines()]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td style='color:{'green' if c.ok else 'red'}'>{'✔' if c.ok else '✘'}</td>"
            f"<td>{html.escape(c.name)}</td><td>{html.escape(c.detail)}</td></tr>"
            for c in self.checks
        )
        diff = "".join(f"<div><code>{html.escape(d)}</code></div>" for d in self.diff)
        table = f"<table>{rows}</table>" if rows else ""
        return f"<div><b>{html.escape(self.headline())}</b>{diff}{table}</div>"

    def to_record(self) -> dict[str, object]:
        record = asdict(self)
        record["ok"] = self.ok
        return record


def record(result: StepResult) -> StepResult:
    """Append the result to the run journal the runner reads into the notebook's metadata."""
    path = os.environ.get(JOURNAL_ENV)
    if path:
        with open(path, "a") as journal:
            journal.write(json.dumps(result.to_record()) + "\n")
    return result


@contextmanager
def timed(result: StepResult) -> Iterator[StepResult]:
    """Fill ``duration_s`` and journal the result, whether the step finished or raised."""
    start = time.monotonic()
    try:
        yield result
    finally:
        result.duration_s = time.monotonic() - start
        record(result)
