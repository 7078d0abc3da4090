"""Waiting with visible progress and a stated timeout.

Two forms, chosen by where the output goes:
- a live tqdm bar (``\\r`` updates) for a person watching: a terminal, or a notebook stepped
  through in JupyterLab, which renders ``\\r`` as an overwrite;
- a plain line every few seconds everywhere else: a CI log (``CI`` set, as GitHub Actions and
  GitLab CI do), a headless ``casera run`` kernel (``CASERA_RUN_ID`` set by the runner), or a
  stdout that is not a terminal. There a ``\\r`` stream ends up as one line of kilobytes in
  the log and in the kept notebook; lines stay readable in both.
``CASERA_PROGRESS=bar|lines`` overrides the choice.

tqdm writes to stdout, not tqdm.auto: the widget form freezes at 0% in notebooks executed
by papermill (docs/facts.md#papermill-and-nbval).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO, TypeVar

from tqdm import tqdm

from casera.errors import WaitTimeout

T = TypeVar("T")

MODE_ENV = "CASERA_PROGRESS"
LINE_EVERY_S = 10.0


def _in_jupyter_kernel() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython()  # type: ignore[attr-defined]
    return getattr(ip, "kernel", None) is not None


def line_mode(stream: TextIO | None = None) -> bool:
    """True when progress must be printed as lines (see the module's docstring)."""
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced in ("bar", "lines"):
        return forced == "lines"
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return True
    if os.environ.get("CASERA_RUN_ID"):  # a kernel the runner started: headless
        return True
    if _in_jupyter_kernel():
        return False
    stream = stream or sys.stdout
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


class Progress:
    """``waiting for WHAT``: a live bar or a line every ``every`` seconds, then a last line."""

    def __init__(self, what: str, total: float, unit: str = "s", show: bool = True,
                 every: float = LINE_EVERY_S, leave: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 stream: TextIO | None = None) -> None:
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.clock, self.stream = clock, stream or sys.stdout
        self.show = show
        self.lines = line_mode(self.stream)
        self.start = clock()
        self.n: float = 0
        self._last_line = self.start
        self._bar = None
        if show and not self.lines:
            self._bar = tqdm(total=int(total), desc=f"waiting for {what}", unit=unit,
                             file=self.stream, leave=leave,
                             bar_format=("{desc}: {elapsed} (limit {total}s)" if unit == "s"
                                         else None))

    def _say(self, text: str) -> None:
        print(f"waiting for {self.what}: {text}", file=self.stream, flush=True)

    def _where(self) -> str:
        elapsed = self.clock() - self.start
        if self.unit == "s":
            return f"{elapsed:.0f}s of at most {self.total:.0f}s"
        return f"{self.n:g}/{self.total:g} {self.unit} after {elapsed:.0f}s"

    def update(self, n: float) -> None:
        """Set the count (seconds waited, or things finished)."""
        self.n = n
        if not self.show:
            return
        if self._bar is not None:
            self._bar.n = int(n)
            self._bar.refresh()
            return
        now = self.clock()
        if now - self._last_line >= self.every:
            self._last_line = now
            self._say(self._where())

    def close(self, outcome: str = "") -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.show and self.lines and outcome:
            self._say(f"{outcome} after {self.clock() - self.start:.0f}s")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close("done" if exc is None else f"stopped ({type(exc).__name__})")


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    interval: float = 1.0,
    show: bool = True,
) -> T:
    """Call ``probe`` until it returns something truthy; return that.

    ``what`` reads as the object of "waiting for ..." and names the thing in the timeout
    message, together with the last answer the probe gave (exceptions included), because
    "timed out" alone tells an operator nothing.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    with Progress(what, timeout, show=show) as bar:
        while True:
            try:
                value = probe()
                last = value
                if value:
                    return value
            except Exception as exc:  # noqa: BLE001 - the probe's failure is the news
                last = f"{type(exc).__name__}: {exc}"
            now = time.monotonic()
            bar.update(min(now - bar.start, timeout))
            if now >= deadline:
                raise WaitTimeout(
                    f"timed out after {timeout:.0f}s waiting for {what}; last answer: {last!r}"
                )
            time.sleep(min(interval, max(0.0, deadline - now)))
