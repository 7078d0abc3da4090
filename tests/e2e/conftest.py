"""The e2e modules share one local cloud: test_bootstrap.py makes it fresh and bootstraps it,
every other module builds on that and leaves it usable for the next. So bootstrap runs first,
whatever the file names sort as."""

from __future__ import annotations

import pytest

FIRST = "test_bootstrap.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # sort is stable: within each group the tests keep their file and definition order.
    items.sort(key=lambda item: item.path.name != FIRST)
