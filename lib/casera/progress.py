"""Waiting with visible progress and a stated timeout.

tqdm writes to stdout, not tqdm.auto: the widget form freezes at 0% in notebooks executed
by papermill (docs/facts.md#papermill-and-nbval).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TypeVar

from tqdm import tqdm

from casera.errors import WaitTimeout

T = TypeVar("T")


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
    bar = tqdm(total=int(timeout), desc=f"waiting for {what}", unit="s", file=sys.stdout,
               disable=not show, leave=True, bar_format="{desc}: {elapsed} (limit {total}s)")
    start = time.monotonic()
    try:
        while True:
            try:
                value = probe()
                last = value
                if value:
                    return value
            except Exception as exc:  # noqa: BLE001 - the probe's failure is the news
                last = f"{type(exc).__name__}: {exc}"
            now = time.monotonic()
            bar.n = min(int(now - start), int(timeout))
            bar.refresh()
            if now >= deadline:
                raise WaitTimeout(
                    f"timed out after {timeout:.0f}s waiting for {what}; last answer: {last!r}"
                )
            time.sleep(min(interval, max(0.0, deadline - now)))
    finally:
        bar.close()
