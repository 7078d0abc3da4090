"""Progress: lines every few seconds in a CI log, a live bar only for a person watching."""

from __future__ import annotations

import io

import pytest

from casera import progress
from casera.errors import WaitTimeout


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def no_mode_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("CI", "CASERA_RUN_ID", progress.MODE_ENV):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("env, stream, lines", [
    ({"CI": "true"}, Tty(), True),
    ({"CI": "false"}, Tty(), False),
    ({"CASERA_RUN_ID": "ab12cd34"}, Tty(), True),
    ({}, io.StringIO(), True),  # a pipe or a file: a log
    ({}, Tty(), False),
    ({"CI": "1", progress.MODE_ENV: "bar"}, io.StringIO(), False),
    ({progress.MODE_ENV: "lines"}, Tty(), True),
])
def test_mode(no_mode_env: pytest.MonkeyPatch, env: dict[str, str], stream: io.StringIO,
              lines: bool) -> None:
    for var, value in env.items():
        no_mode_env.setenv(var, value)
    assert progress.line_mode(stream) is lines


def test_ci_log_gets_a_line_every_few_seconds(no_mode_env: pytest.MonkeyPatch) -> None:
    no_mode_env.setenv("CI", "true")
    out, clock = io.StringIO(), Clock()
    with progress.Progress("servers to boot", 300, clock=clock, stream=out,
                           every=10) as bar:
        for _ in range(120):  # a minute in half-second polls
            clock.now += 0.5
            bar.update(clock.now - bar.start)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 7, lines  # 10 s, 20 s, ... 60 s, then how it ended
    assert lines[0] == "waiting for servers to boot: 10s of at most 300s"
    assert lines[-1] == "waiting for servers to boot: done after 60s"
    assert max(len(line) for line in lines) < 80


def test_counted_things_and_a_failure_say_so(no_mode_env: pytest.MonkeyPatch) -> None:
    no_mode_env.setenv("CI", "true")
    out, clock = io.StringIO(), Clock()
    with pytest.raises(RuntimeError), progress.Progress("3 actions", 3, unit="actions",
                                                        clock=clock, stream=out) as bar:
        clock.now += 11
        bar.update(2)
        raise RuntimeError("boom")
    assert out.getvalue().splitlines() == [
        "waiting for 3 actions: 2/3 actions after 11s",
        "waiting for 3 actions: stopped (RuntimeError) after 11s",
    ]


def test_terminal_gets_the_live_bar(no_mode_env: pytest.MonkeyPatch) -> None:
    out = Tty()
    with progress.Progress("x", 5, stream=out, every=0) as bar:
        bar.update(1)
        bar.update(2)
    assert "\r" in out.getvalue()
    assert "waiting for x: " in out.getvalue()


def test_wait_for_in_ci(no_mode_env: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    no_mode_env.setenv("CI", "true")
    answers = iter([None, None, "up"])
    assert progress.wait_for("the node", lambda: next(answers), timeout=5,
                             interval=0.01) == "up"
    with pytest.raises(WaitTimeout, match="waiting for the gone node; last answer: None"):
        progress.wait_for("the gone node", lambda: None, timeout=0.05, interval=0.01)
    out = capsys.readouterr().out
    assert "\r" not in out
    assert out.splitlines() == ["waiting for the node: done after 0s",
                                "waiting for the gone node: stopped (WaitTimeout) after 0s"]
