"""The swarm, secrets and stack steps on a cloud with no servers yet: a dry run plans what the
run will make, step by step, on the swarm the earlier steps would make (the e2e compares these
counts with the first run's), and a run stops before touching anything, naming what to run
first. Both come from one prologue (``swarm.cluster_or_reason``)."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from casera.context import RunContext
from casera.errors import StepFailed
from casera.operator_secrets import Secret, SecretStore
from casera.params import load_params
from casera.steps import access, stack, swarm, swarm_secrets

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunContext:
    key = tmp_path / "operator_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    monkeypatch.setenv("CASERA_PROJECT_DIR", str(tmp_path))
    params = load_params("local", path=REPO / "params" / "local.yaml", overrides={
        "hetzner.ssh_public_key_file": f"{key}.pub", "ssh.private_key_file": str(key)})
    secrets = SecretStore("local", environ={}, file=tmp_path / "none.env")
    # No servers in the project: what the Hetzner API answers before the bootstrap.
    asked: list[str] = []
    monkeypatch.setattr(swarm, "node_addresses", lambda c: asked.append("swarm") or {})
    monkeypatch.setattr(access, "node_addresses", lambda c: asked.append("access") or {})
    context = RunContext(env="local", params=params, secrets=secrets, interactive=False)
    context.shared["asked"] = asked
    return context


VALUES = {"db_password": Secret("db_password", "x" * 32),
          "secret_key": Secret("secret_key", "y" * 32)}


def test_a_dry_run_plans_every_step_on_the_swarm_it_would_make(ctx: RunContext) -> None:
    dry = replace(ctx, dry_run=True)
    names = ctx.params.server_names()
    made = swarm.ensure_swarm(dry)
    assert made.changed == len(names) == 3
    assert made.diff == [f"+ swarm init on {names[0]}"] + [
        f"+ {n} joins as manager" for n in names[1:]]
    assert "no servers yet" in made.reason
    labels = swarm.ensure_node_labels(dry)
    # One change per labelled node: redis on its node, dozzle on every manager when allowed.
    labelled = (len(names) if ctx.params.swarm.dozzle_on_managers else 1)
    assert labels.changed == labelled
    redis_host = names[ctx.params.swarm.redis_node - 1]
    assert f"+ {redis_host} {swarm.REDIS_LABEL}=true" in labels.diff
    overlay = swarm.ensure_overlay_network(dry)
    assert overlay.changed == 1 and overlay.diff == [
        f"+ overlay {ctx.params.swarm.overlay_network} (attachable, "
        f"encrypted={ctx.params.swarm.overlay_encrypted})"]
    secrets = swarm_secrets.ensure_swarm_secrets(dry, VALUES)
    assert secrets.changed == 2
    assert secrets.diff == ["+ casera_db_password_v1", "+ casera_secret_key_v1"]
    assert all("x" * 32 not in line and "y" * 32 not in line for line in secrets.diff)
    deployed = stack.ensure_stack(dry)
    assert deployed.changed == 1 and deployed.diff[0].startswith(f"+ stack {stack.STACK}: api x")
    for checks in (swarm.verify_swarm(dry), stack.verify_stack(dry, VALUES),
                   swarm.verify_overlay_traffic(dry)):
        assert checks.changed == 0 and not checks.checks and checks.reason
    assert all(result.dry_run for result in (made, labels, overlay, secrets, deployed))


@pytest.mark.parametrize("step", [
    swarm.ensure_swarm, swarm.verify_swarm, swarm.ensure_node_labels,
    swarm.ensure_overlay_network, stack.ensure_stack,
    lambda c: swarm_secrets.ensure_swarm_secrets(c, VALUES)])
def test_a_run_without_servers_stops_naming_what_to_run_first(ctx: RunContext, step) -> None:
    with pytest.raises(StepFailed, match="no servers yet: run the servers and swarm steps"):
        step(ctx)
    # It asked for the servers and opened nothing: no pool was even made.
    assert ctx.shared["asked"] and "docker" not in ctx.shared and "ssh" not in ctx.shared
