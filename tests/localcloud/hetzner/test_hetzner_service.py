"""``up`` / ``status`` / ``down`` start and stop a detached emulator (fake backend)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hcloud import Client
from hcloud.images.domain import Image
from hcloud.server_types.domain import ServerType
from hetzner_harness import free_port

from casera_localcloud import hetzner
from casera_localcloud.hetzner.service import TOKEN_ENV
from casera_localcloud.local_credentials import read_local_secrets


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CASERA_LOCAL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CASERA_PROJECT_DIR", str(tmp_path / "project"))
    return tmp_path


def test_up_status_down(scratch: Path) -> None:
    port = free_port()
    try:
        lines = hetzner.up(port=port, backend="fake")
        assert any("started emulator" in line for line in lines), lines
        token = read_local_secrets()[TOKEN_ENV]
        assert (scratch / "project" / "secrets" / "local.env").stat().st_mode & 0o777 == 0o600
        assert any("already running" in line for line in hetzner.up(port=port,
                                                                     backend="fake"))
        client = Client(token, api_endpoint=hetzner.endpoint(port), poll_interval=0.1)
        client.servers.create(name="svc-node", server_type=ServerType(name="cx33"),
                              image=Image(name="docker-ce")).action.wait_until_finished()
        report = hetzner.status(port=port)
        assert any("svc-node running 10.77.0.11" in line for line in report), report
        # A lost token: up makes a new one and restarts the emulator, servers kept.
        (scratch / "project" / "secrets" / "local.env").unlink()
        lines = hetzner.up(port=port, backend="fake")
        assert any("restarting" in line for line in lines), lines
        client = Client(read_local_secrets()[TOKEN_ENV], api_endpoint=hetzner.endpoint(port))
        assert client.servers.get_by_name("svc-node") is not None
    finally:
        lines = hetzner.down()
    assert any("stopped emulator" in line for line in lines), lines
    assert hetzner.status(port=port) == ["hetzner: emulator not running"]


def test_up_refuses_without_a_node_backend(scratch: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from casera.errors import CaseraError
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "casera_localcloud.nodes"
                        else real(name, *a))
    with pytest.raises(CaseraError, match="casera_localcloud.nodes"):
        hetzner.up(port=free_port())
