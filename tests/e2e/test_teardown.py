"""The teardown runbook on the bootstrapped local cloud, then the bootstrap building it again.

A dry run lists every server, the LB, the firewall, the DNS record and the scoped keys, with
the monthly cost, and deletes nothing; asking for the data to go without ``confirm`` is
refused before any change; the run removes everything but the data (a final Redis snapshot
first); then ``scripts/staging-rebuild.sh local``, whose first step (the teardown again)
changes nothing, brings the environment back onto the kept data (bootstrap), green in health
and in a short load test.
Runs last among the e2e modules (alphabetically) and leaves the cloud bootstrapped.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import casera, hcloud

from casera import b2_keys
from casera.params import load_params
from casera.paths import outputs_dir
from casera.providers import ssh

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def latest(runbook: str) -> dict[str, Any]:
    path = sorted((outputs_dir("local") / runbook).glob("*.ipynb"))[-1]
    return json.loads(Path(path).read_text())["metadata"]["casera"]


def steps_of(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in meta["steps"]}


def inventory() -> dict[str, int]:
    api = hcloud()
    return {"servers": len(api.servers.get_all(label_selector="cluster=casera-local")),
            "load balancers": len(api.load_balancers.get_all(name="casera-local")),
            "firewalls": len(api.firewalls.get_all(name="casera-local"))}


def test_dry_run_lists_everything_with_its_cost_and_deletes_nothing() -> None:
    before = inventory()
    assert before == {"servers": 3, "load balancers": 1, "firewalls": 1}, before
    done = casera("run", "teardown", "--env", "local", "--dry-run")
    assert done.returncode == 0, done.stderr[-2000:]
    meta = latest("teardown")
    found = steps_of(meta)
    servers = [line for line in found["servers"]["diff"] if line.startswith("- server")]
    assert len(servers) == 3 and all("net /" in line for line in servers), servers
    assert any("a month" in line for line in found["load balancer"]["diff"])
    assert found["firewall"]["changed"] == 1 and found["dns record"]["changed"] == 1
    # every scoped key params name (the api's, certs', the Redis backup's, pg_dump's)
    assert found["b2 keys"]["changed"] == len(load_params("local").b2.keys) >= 4
    assert found["b2 buckets"]["changed"] == 0  # kept
    assert inventory() == before


def test_deleting_data_without_confirm_is_refused_before_any_change() -> None:
    done = casera("run", "teardown", "--env", "local", "-p", "delete_data=true")
    assert done.returncode == 1
    meta = latest("teardown")
    assert "confirm" in (meta.get("error") or "") + done.stderr, done.stderr[-1500:]
    assert [s["step"] for s in meta["steps"]] == ["teardown allowed"], meta["steps"]
    assert inventory() == {"servers": 3, "load balancers": 1, "firewalls": 1}


def test_teardown_removes_all_but_the_data() -> None:
    done = casera("run", "teardown", "--env", "local")
    assert done.returncode == 0, done.stderr[-3000:]
    found = steps_of(latest("teardown"))
    assert found["redis snapshot"]["changed"] == 1  # the final snapshot, listed in B2
    assert found["torn down"]["checks"] and all(c["ok"] for c in found["torn down"]["checks"])
    assert inventory() == {"servers": 0, "load balancers": 0, "firewalls": 0}
    assert ssh.KnownHosts.for_env("local").names() == {}
    assert b2_keys.key_store("local").load() == {}
    # The re-run that changes nothing is the staging rebuild's first step (below).


def test_staging_rebuild_local_end_to_end(record_property: pytest.RecordProperty) -> None:
    """scripts/staging-rebuild.sh local on the torn-down env: teardown (nothing left to do),
    bootstrap, health, a short load test; each step's notebook kept."""
    before = {r: len(list((outputs_dir("local") / r).glob("*.ipynb")))
              for r in ("teardown", "bootstrap", "health", "load-test")}
    started = time.monotonic()
    done = subprocess.run([str(REPO / "scripts" / "staging-rebuild.sh"), "local"], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    took = time.monotonic() - started
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert "all 4 steps succeeded" in done.stdout, done.stdout[-1500:]
    for runbook, count in before.items():
        assert len(list((outputs_dir("local") / runbook).glob("*.ipynb"))) == count + 1, runbook
        assert latest(runbook)["status"] == "succeeded", runbook
    # Its teardown met the env the teardown test left: a re-run, which changes nothing.
    assert latest("teardown")["changes"] == 0, latest("teardown")["steps"]
    assert inventory() == {"servers": 3, "load balancers": 1, "firewalls": 1}
    record_property("measured", f"staging-rebuild.sh local: {took:.0f} s")
