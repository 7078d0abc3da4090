"""A fresh emulator per test; every answer it gave is checked against the OpenAPI spec when
the test ends (see hetzner_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hetzner_harness import Running, start, stop_and_check

from casera_localcloud.hetzner.fake_backend import FakeNodeBackend


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Running]:
    running = start(tmp_path / "hetzner", FakeNodeBackend())
    try:
        yield running
    finally:
        stop_and_check(running)
