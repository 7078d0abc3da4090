"""The secret migration (env vars -> Docker secrets) on the live local cloud, under a steady
probe through the load balancer: 0 failed requests, no secret value left anywhere.

Runs after tests/e2e/test_bootstrap.py on the cloud it left (this module never brings the cloud
up or down) and leaves it as it found it: migrated, converged, the normal deploy.

    pytest tests/e2e/test_bootstrap.py tests/e2e/test_secret_migration.py

One pass, each roll counted once to keep the module short:
1. the runbook's one-step rollback (``-p mode=rollback``) makes the before-state: values in env
   vars, nothing mounted; the Docker secrets nothing mounts any more are then removed, as on a
   stack that never had them (so the migration must create them from the operator's store);
2. the migration stopped right after roll 1 (the runbook's own cells in a real kernel, then a
   cell that raises, as a crash or a Ctrl-C there would): every task has env vars and files;
3. ``casera run secret-migration`` converges from there (roll 2 and the clean-up);
4. a re-run reports 0 changes, and the bootstrap's stack step accepts the result (0 changes).
The probe runs from before the rollback to after the converging run.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import casera, hcloud, run_stopped_after

from casera.context import RunContext
from casera.errors import CaseraError
from casera.load_stats import figures
from casera.operator_secrets import SecretStore
from casera.params import load_params
from casera.paths import outputs_dir
from casera.providers import docker_swarm
from casera.stack import SECRET_ENV_VARS, SERVICE_SECRETS
from casera.steady_probe import SteadyProbe
from casera.steps import stack
from casera.steps.access import node_addresses
from casera.steps.api_endpoint import api_endpoint_for
from casera.steps.swarm import docker_clients
from casera.steps.swarm_secrets import PREFIX, stack_secret_values

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]
RUNBOOK = "secret-migration"


def local_ctx() -> RunContext:
    """A context for reading the cloud; built directly, as start_run would take the env lock
    that the runs under test need."""
    secrets = SecretStore("local")
    return RunContext(env="local", params=load_params("local", secrets=secrets),
                      secrets=secrets, interactive=False, run_id="e2e-secrets", operator="e2e")


def latest_run() -> tuple[Path, dict[str, Any]]:
    path = sorted((outputs_dir("local") / RUNBOOK).glob("*.ipynb"))[-1]
    return path, json.loads(path.read_text())["metadata"]["casera"]


def steps_of(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in meta["steps"]}


def respecs(step: dict[str, Any]) -> list[str]:
    """The services whose clean spec a clean-up step sends again (stopped containers the node
    had not removed yet may come on top: a race with the node's agent, not a plan)."""
    return sorted(line.split(":")[0] for line in step["diff"] if line.startswith("~ casera_"))


def env_and_mounts(client: Any) -> dict[str, tuple[list[str], list[str]]]:
    """service -> (secret env var names in its spec, secret file names it mounts)."""
    services = stack.stack_services(client)
    out = {}
    for name in SERVICE_SECRETS:
        container = services[name]["spec"]["TaskTemplate"]["ContainerSpec"]
        env = sorted(e.split("=", 1)[0] for e in container.get("Env") or []
                     if e.split("=", 1)[0] in SECRET_ENV_VARS)
        out[name] = (env, sorted(s["File"]["Name"] for s in container.get("Secrets") or []))
    return out


def test_migration_under_a_steady_probe(tmp_path: Path,
                                        record_property: Callable[[str, object], None]) -> None:
    ctx = local_ctx()
    values = {name: v.reveal() for name, v in stack_secret_values(ctx).items()}
    assert all(len(v) >= 8 for v in values.values())  # long enough that a find means a leak
    lb = hcloud().load_balancers.get_by_name(ctx.params.load_balancer.name)
    api = api_endpoint_for(ctx.params, lb.public_net.ipv4.ip)
    started = time.monotonic()
    marks: dict[str, float] = {}
    with ExitStack() as stack_, SteadyProbe(api, b2=True) as probe:
        clients = docker_clients(ctx, stack_, node_addresses(ctx))
        manager = next(iter(clients.values()))

        # 1. The before-state, by the one-step rollback.
        done = casera("run", RUNBOOK, "--env", "local", "-p", "mode=rollback")
        assert done.returncode == 0, done.stderr[-2000:]
        _, meta = latest_run()
        back = steps_of(meta)["rollback to env vars"]
        assert back["changed"] >= 1 and all(c["ok"] for c in back["checks"]), back
        state = env_and_mounts(manager)
        for name, secrets in SERVICE_SECRETS.items():
            assert state[name] == (sorted(s.upper() for s in secrets), []), (name, state[name])
        # The bootstrap's stack step leaves a legacy stack to this runbook.
        with pytest.raises(CaseraError, match="casera run secret-migration --env local"):
            stack.ensure_stack(ctx)
        # What a stack that never had Docker secrets looks like: none of ours exist.
        for secret in manager.secrets.list(filters={"label": f"{PREFIX}.secret"}):
            secret.remove()
        marks["rollback"] = time.monotonic() - started

        # A dry run plans every change and makes none.
        done = casera("run", RUNBOOK, "--env", "local", "--dry-run")
        assert done.returncode == 0, done.stderr[-2000:]
        _, meta = latest_run()
        dry = steps_of(meta)
        planned = {name: s["changed"] for name, s in dry.items()}
        assert planned["docker secrets"] == len(stack_secret_values(ctx))
        assert planned["roll 1: add secret files"] == 1
        assert planned["roll 2: remove secret env vars"] == 1
        assert len(respecs(dry["clean rollback targets"])) == len(SERVICE_SECRETS)
        assert not manager.secrets.list(filters={"label": f"{PREFIX}.secret"})
        assert all(s[1] == [] for s in env_and_mounts(manager).values())

        # 2. Stopped right after roll 1: env vars and files on every service.
        run_stopped_after(RUNBOOK, "roll_mounts", tmp_path,
                          {"run_id": "e2e-stopped", "mode": "migrate"})
        state = env_and_mounts(manager)
        for name, secrets in SERVICE_SECRETS.items():
            assert state[name] == (sorted(s.upper() for s in secrets), sorted(secrets)), name
        marks["roll 1 (stopped run)"] = time.monotonic() - started

        # 3. The re-run converges.
        done = casera("run", RUNBOOK, "--env", "local")
        assert done.returncode == 0, done.stderr[-2000:]
        marks["converging run"] = time.monotonic() - started
        kept, meta = latest_run()
        ran = steps_of(meta)
        assert ran["roll 1: add secret files"]["changed"] == 0  # the stopped run did it
        # What the dry run planned for these steps is what they did.
        assert ran["roll 2: remove secret env vars"]["changed"] == planned[
            "roll 2: remove secret env vars"]
        assert respecs(ran["clean rollback targets"]) == respecs(dry["clean rollback targets"])
        assert all(c["ok"] for s in ran.values() for c in s["checks"])
    failed = probe.failed()
    f = figures(probe.rows)  # type: ignore[arg-type]
    record_property("measured", f"secret migration under the probe: {f.requests} requests "
                    f"through the LB ({len(failed)} failed), p99 {f.p99_ms:.0f} ms; "
                    + ", ".join(f"{k} done at {v:.0f} s" for k, v in marks.items()))
    assert probe.rows and not failed, Counter(f"{r.what}: {r.detail[:60]}" for r in failed)

    # No value anywhere: checked here independently of the runbook's own step.
    assert all(state[0] == [] and state[1] for state in env_and_mounts(manager).values())
    for service in docker_swarm.services(manager):
        for where in ("spec", "previous_spec"):
            text = json.dumps(service[where] or {})
            assert not [n for n, v in values.items() if v in text], (service["name"], where)
    tasks_text = json.dumps(docker_swarm.tasks(manager))
    assert not [n for n, v in values.items() if v in tasks_text], "a task spec holds a value"
    for node, client in clients.items():
        for container in docker_swarm.container_envs(client):
            env = "\n".join(container["env"])
            assert not [n for n, v in values.items() if v in env], (node, container["name"])
    notebook = kept.read_text()
    assert not [n for n, v in values.items() if v in notebook]
    assert not [n for n, v in values.items() if json.dumps(v)[1:-1] in notebook]

    # 4. A re-run changes nothing; the bootstrap's stack step takes this as its own state.
    done = casera("run", RUNBOOK, "--env", "local")
    assert done.returncode == 0, done.stderr[-2000:]
    _, meta = latest_run()
    assert sum(s["changed"] for s in meta["steps"]) == 0, [
        (s["step"], s["diff"]) for s in meta["steps"] if s["changed"]]
    stack_step = stack.ensure_stack(local_ctx())
    assert stack_step.changed == 0, stack_step.diff
    assert re.search(r"unchanged", stack_step.reason), stack_step.reason
    record_property("measured", f"secret migration module: {time.monotonic() - started:.0f} s")
