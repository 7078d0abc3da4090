"""The e2e modules share one local cloud: test_bootstrap.py makes it fresh and bootstraps it,
every other module builds on that and leaves it usable for the next. So bootstrap runs first,
whatever the file names sort as."""

from __future__ import annotations

import pytest

FIRST = "test_bootstrap.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # sort is stable: within each group the tests keep their file and definition order.
    items.sort(key=lambda item: item.path.name != FIRST)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Figures the tests measured (`record_property("measured", ...)`), shown in the CI log:
    reported, never asserted."""
    from e2e_harness import RUN_TIMES

    if RUN_TIMES:
        by_kind: dict[str, list[float]] = {}
        for what, seconds in RUN_TIMES:
            by_kind.setdefault(what, []).append(seconds)
        terminalreporter.write_line(
            f"measured: the e2e runs: {len(RUN_TIMES)} took {sum(s for _, s in RUN_TIMES):.0f} s "
            "of wall time (the rest: the tests' own probes, faults and waits); by command: "
            + "; ".join(f"{what} x{len(times)} {sum(times):.0f} s" for what, times in
                        sorted(by_kind.items(), key=lambda kv: -sum(kv[1]))))
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", []):
                if name == "measured" and getattr(report, "when", "") == "call":
                    terminalreporter.write_line(f"measured: {value}")
