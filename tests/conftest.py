"""Shared fixtures: a scratch copy of the project, so runner tests never touch the real
outputs/ or secrets/, and planted secrets whose values must never appear in any output.

The env lock lives in the environment's Hetzner project, so each scratch project gets its own
Hetzner emulator on a free port (in memory, fake nodes): no local cloud is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from runner_helpers import PLANTED, hetzner_emulator, make_checkout


@pytest.fixture()
def hetzner_url() -> Iterator[str]:
    with hetzner_emulator() as url:
        yield url


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hetzner_url: str) -> Path:
    """A scratch checkout: params/ and runbooks/ copied, a git commit, planted secrets, its
    own Hetzner."""
    root = make_checkout(tmp_path / "project", hetzner_url)
    monkeypatch.setenv("CASERA_PROJECT_DIR", str(root))
    monkeypatch.setenv("CASERA_OPERATOR", "test-operator")
    for var, value in PLANTED.items():
        monkeypatch.setenv(var, value)
    return root
