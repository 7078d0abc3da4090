"""The health runbook on the bootstrapped local cloud: red (exit 1) after drift planted by
hand, the kind an operator makes at 3 a.m. (a firewall rule removed, a service scaled, a node
label taken off), its kept notebook naming each difference and what fixes it; green (exit 0,
0 changes) after the fix it names (a bootstrap re-run). Builds on test_bootstrap.py and leaves
the cloud as it found it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import casera, hcloud
from hcloud.firewalls.domain import FirewallRule
from test_bootstrap import PARAMS

from casera.context import RunContext
from casera.operator_secrets import SecretStore
from casera.params import load_params
from casera.paths import outputs_dir
from casera.providers import docker_swarm
from casera.steps.swarm import DOZZLE_LABEL, connect_cluster

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]


def latest_health() -> tuple[Path, dict[str, Any]]:
    path = sorted((outputs_dir("local") / "health").glob("*.ipynb"))[-1]
    return path, json.loads(path.read_text())


def red_checks(meta: dict[str, Any]) -> dict[str, str]:
    """step target / check -> detail, for every red check of the run."""
    return {f"{s['step']} {s['target']} / {c['name']}": c["detail"]
            for s in meta["steps"] for c in s["checks"] if c["kind"] == "check" and not c["ok"]}


def local_ctx() -> RunContext:
    secrets = SecretStore("local")
    return RunContext(env="local", params=load_params("local", secrets=secrets),
                      secrets=secrets, interactive=False, run_id="e2e-health", operator="e2e")


def test_planted_drift_is_red_naming_the_fix_then_the_fix_makes_it_green(
        record_property: pytest.RecordProperty) -> None:
    client = connect_cluster(local_ctx()).manager
    # 1. A firewall rule removed by hand (Swarm gossip over UDP).
    fw = hcloud().firewalls.get_by_name(PARAMS.firewall.name)
    fw.set_rules([FirewallRule(direction=r.direction, protocol=r.protocol, port=r.port,
                               source_ips=r.source_ips, description=r.description)
                  for r in fw.rules if not (r.protocol == "udp" and r.port == "7946")])
    # 2. A service scaled by hand.
    admin = client.services.get("casera_admin")
    admin.scale(PARAMS.services.admin.replicas + 1)
    # 3. A node label taken off a node Dozzle does not run on (it stays where it is).
    dozzle = [t for t in docker_swarm.tasks(client, {"service": "casera_dozzle",
                                                     "desired-state": "running"})]
    dozzle_nodes = {t["NodeID"] for t in dozzle}
    nodes = [n for n in docker_swarm.nodes(client)
             if n["labels"].get(DOZZLE_LABEL) == "true" and n["id"] not in dozzle_nodes]
    assert nodes, "no Dozzle-labelled node without Dozzle to take the label off"
    unlabelled = nodes[0]
    docker_swarm.set_node_labels(client, unlabelled["id"], {
        k: v for k, v in unlabelled["labels"].items() if k != DOZZLE_LABEL})

    done = casera("run", "health", "--env", "local", timeout=900)
    path, nb = latest_health()
    meta = nb["metadata"]["casera"]
    red = red_checks(meta)
    assert done.returncode == 1 and meta["status"] == "failed", meta["status"]
    assert meta["changes"] == 0, "a health run changed something"
    firewall = [d for k, d in red.items() if k.startswith("drift firewall")]
    assert firewall and "7946" in firewall[0] and "fix: casera run bootstrap" in firewall[0], red
    scaled = red.get("services casera / admin replicas", "")
    # The spec is the drift (the new task may still be starting while health reads).
    assert f"spec {PARAMS.services.admin.replicas + 1}" in scaled, red
    assert "fix: casera run bootstrap" in scaled, scaled
    labels = [d for k, d in red.items() if k.startswith("drift node labels")]
    assert labels and unlabelled["hostname"] in labels[0] and "bootstrap" in labels[0], red
    # The kept notebook says it on its last step too, for the reader who scrolls to the end.
    verdict = [s for s in meta["steps"] if s["step"] == "health"][-1]
    assert not verdict["ok"] and len([c for c in verdict["checks"] if not c["ok"]]) >= 3
    assert "fix:" in path.read_text()

    fixed = casera("run", "bootstrap", "--env", "local", timeout=1800)
    assert fixed.returncode == 0
    started = time.monotonic()
    again = casera("run", "health", "--env", "local", timeout=900)
    record_property("measured", f"health run after the fix: {time.monotonic() - started:.0f} s")
    meta = latest_health()[1]["metadata"]["casera"]
    assert again.returncode == 0, red_checks(meta)
    # Green on a healthy env, read-only, every part of it looked at (this run is also the
    # proof that the red run above was the drift's doing: the same checks can be green).
    assert meta["status"] == "succeeded" and meta["changes"] == 0, meta["status"]
    steps = {s["step"] for s in meta["steps"]}
    assert {"drift", "servers", "services", "redis backups", "health"} <= steps, steps
