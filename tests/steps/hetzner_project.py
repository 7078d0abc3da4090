"""What the Hetzner step tests share: a private Hetzner emulator (fake node backend: no
containers) reached through the real hcloud client, and a RunContext pointed at it with a
fresh operator key."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "localcloud" / "hetzner"))
from hetzner_harness import TOKEN, Running, start, stop_and_check  # noqa: E402

from casera.context import RunContext  # noqa: E402
from casera.operator_secrets import SecretStore  # noqa: E402
from casera.params import load_params  # noqa: E402
from casera_localcloud.hetzner.fake_backend import FakeNodeBackend  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    # ensure_servers pins host keys in params/local.known_hosts: a scratch one, not the checkout's.
    monkeypatch.setenv("CASERA_PROJECT_DIR", str(tmp_path / "project"))
    running = start(tmp_path / "hetzner", FakeNodeBackend())
    try:
        yield running
    finally:
        stop_and_check(running)


def make_ctx(tmp_path: Path, emulator: Running, dry_run: bool = False,
             key_name: str = "operator_ed25519", **overrides: object) -> RunContext:
    key = tmp_path / key_name
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
    params = load_params("local", path=REPO / "params" / "local.yaml", overrides={
        "hetzner.api_endpoint": emulator.url,
        "hetzner.ssh_public_key_file": f"{key}.pub",
        "ssh.private_key_file": str(key),
        **overrides,
    })
    secrets = SecretStore("local", environ={"CASERA_HCLOUD_TOKEN": TOKEN},
                          file=tmp_path / "none.env")
    return RunContext(env="local", params=params, secrets=secrets, dry_run=dry_run,
                      interactive=False)


def bootstrapped(tmp_path: Path, emulator: Running, **overrides: object) -> RunContext:
    """A context on a project the bootstrap's Hetzner steps built: SSH key, firewall, servers
    running, and the firewall again (its cluster rules name the servers' addresses)."""
    from casera.steps import firewall, servers, ssh_key

    ctx = make_ctx(tmp_path, emulator, **overrides)
    ssh_key.ensure_ssh_key(ctx)
    firewall.ensure_firewall(ctx)
    servers.ensure_servers(ctx)
    emulator.idle()
    firewall.ensure_firewall(ctx)
    return ctx
