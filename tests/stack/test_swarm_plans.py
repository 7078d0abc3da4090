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
from casera.errors import StepFailed, WaitTimeout
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


def test_a_dry_run_with_an_extra_worker_joins_it_as_a_worker_without_dozzle(
        ctx: RunContext) -> None:
    """hetzner.server_count 4 with swarm.workers naming the fourth (the scale-out's
    extra_worker): it joins with the worker token and gets no Dozzle label (managers only)."""
    p = ctx.params
    four = p.model_copy(update={
        "hetzner": p.hetzner.model_copy(update={"server_count": 4}),
        "swarm": p.swarm.model_copy(update={"workers": [f"{p.hetzner.name_prefix}-4"]})})
    dry = replace(ctx, params=four, dry_run=True)
    names = four.server_names()
    made = swarm.ensure_swarm(dry)
    assert made.target == "3 managers, 1 worker"
    assert made.diff == [f"+ swarm init on {names[0]}"] + [
        f"+ {n} joins as manager" for n in names[1:3]] + [f"+ {names[3]} joins as worker"]
    labels = swarm.ensure_node_labels(dry)
    assert not any(line.startswith(f"+ {names[3]} {swarm.DOZZLE_LABEL}") for line in labels.diff)
    assert (sum(swarm.DOZZLE_LABEL in line for line in labels.diff)
            == (3 if p.swarm.dozzle_on_managers else 0)), labels.diff


def test_the_swarm_check_wants_the_worker_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from casera.result import StepResult

    def entry(name: str, role: str) -> dict:
        return {"hostname": name, "role": role, "state": "ready", "leader": name == "n-1",
                "reachability": "reachable" if role == "manager" else None}

    live = [entry("n-1", "manager"), entry("n-2", "manager"), entry("n-3", "manager"),
            entry("n-4", "worker")]
    monkeypatch.setattr(swarm.docker_swarm, "nodes", lambda client: live)
    nodes = {f"n-{i}": f"10.0.0.{i}" for i in range(1, 5)}
    result = StepResult("swarm", "test")
    swarm._verify_managers(None, nodes, result, 1, ["n-4"])
    checks = {c.name: (c.ok, c.detail) for c in result.checks}
    assert checks["workers"] == (True, "1 of 1 ready: n-4"), checks
    assert checks["managers"][0] and checks["odd manager count"][0], checks
    # The same swarm without params naming the worker: not converged, within the timeout.
    with pytest.raises(WaitTimeout, match="4 reachable managers"):
        swarm._verify_managers(None, nodes, StepResult("swarm", "test"), 1)
