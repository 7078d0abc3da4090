"""Hetzner actions (a server's creation, a firewall's rules taking effect), and waiting for
several at once.

Everything a caller started is waited for together: each poll reloads every action still
running, then sleeps once, so three server creations take as long as the slowest, not the sum.
The poll interval backs off exponentially (1 s doubling, capped at 5 s) like the client's own:
a creation takes tens of seconds, and polling every second would spend the project's
3600 requests an hour (https://docs.hetzner.cloud/reference/cloud#rate-limiting) on waiting.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hcloud import exponential_backoff_function

from casera.errors import ProviderError, WaitTimeout
from casera.progress import Progress
from casera.providers.hetzner.errors import SYSTEM, hetzner_errors

POLL_INTERVAL = exponential_backoff_function(base=1.0, multiplier=2, cap=5.0, jitter=True)


@dataclass(frozen=True)
class Action:
    """An action the API started; only :func:`wait_for` looks inside."""

    id: int
    command: str
    _bound: Any = field(repr=False, compare=False)

    @classmethod
    def of(cls, bound: Any) -> Action:
        return cls(id=int(bound.id), command=str(bound.command), _bound=bound)


def actions_of(bound: Sequence[Any] | None) -> list[Action]:
    return [Action.of(b) for b in bound or [] if b is not None]


def wait_for(actions: Sequence[Action | None], what: str, timeout: float) -> None:
    """Wait until every action has finished; raise :class:`ProviderError` naming the first
    that failed (its API error code kept), or :class:`WaitTimeout` naming those still running
    after ``timeout`` seconds. A progress bar counts the finished ones."""
    pending = [a for a in actions if a is not None]
    if not pending:
        return
    deadline = time.monotonic() + timeout
    polls = 0
    finished = 0
    with Progress(what, len(pending), unit="actions", leave=False) as bar:
        while True:
            running = []
            for action in pending:
                bound = action._bound
                with hetzner_errors(f"{what}: read action {action.id} ({action.command})"):
                    bound.reload()
                if bound.status == "running":
                    running.append(action)
                    continue
                finished += 1
                bar.update(finished)
                if bound.status == "error":
                    error = bound.error or {}
                    raise ProviderError(SYSTEM, f"{what}: {action.command} (action "
                                        f"{action.id}) failed: {error.get('message', '?')}",
                                        error.get("code"), error)
            pending = running
            if not pending:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"{what}: {len(pending)} action(s) still running after "
                                  f"{timeout:.0f} s: " + ", ".join(
                                      f"{a.command} {a.id}" for a in pending))
            polls += 1
            time.sleep(min(POLL_INTERVAL(polls), left))
