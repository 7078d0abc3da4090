"""Params: every shipped file validates; every kind of bad input names file, key and fix."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from casera.errors import ParamsError
from casera.operator_secrets import SecretStore
from casera.params import REPLICA_RANGES, load_params, parse_override

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("env", ["local", "staging", "production"])
def test_shipped_params_are_valid(env: str) -> None:
    # As templates: staging and production keep placeholders a run refuses (tested below).
    params = load_params(env, path=REPO / "params" / f"{env}.yaml", for_run=False)
    assert params.env == env
    assert params.hetzner.server_count == 3 and params.hetzner.server_type == "cx33"
    for name, (low, high) in REPLICA_RANGES.items():
        assert low <= getattr(params.services, name).replicas <= high
    assert any(rule.protocol == "esp" for rule in params.firewall.rules)
    assert params.neon.sslmode in ("require", "verify-full")


def test_production_keeps_the_seeds_values_and_local_says_why_not() -> None:
    prod = load_params("production", path=REPO / "params" / "production.yaml", for_run=False)
    local = load_params("local", path=REPO / "params" / "local.yaml")
    assert (prod.swarm.overlay_encrypted, prod.swarm.endpoint_mode, prod.swarm.publish_mode) == (
        True, "vip", "ingress")
    assert (local.swarm.overlay_encrypted, local.swarm.endpoint_mode,
            local.swarm.publish_mode) == (False, "dnsrr", "host")
    assert prod.runner.approval == "required" and local.runner.approval == "auto"


def _write(tmp_path: Path, mutate: dict) -> Path:
    raw = yaml.safe_load((REPO / "params" / "local.yaml").read_text())
    for dotted, value in mutate.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        if value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


_DELETE = object()


@pytest.mark.parametrize(("mutate", "key", "words"), [
    ({"hetzner.servr_type": "cx33"}, "hetzner.servr_type", "unknown key"),
    ({"hetzner.server_count": "3"}, "hetzner.server_count", "expected an integer"),
    # A cross-check (the count less swarm.workers), so at the top level; it names the key.
    ({"hetzner.server_count": 4}, "(top level)", "hetzner.server_count 4 is 4 managers"),
    ({"services.worker.replicas": 4}, "services.worker", "outside the plan's range (2 to 3)"),
    ({"services.api.replicas": 2}, "services.api", "outside the plan's range (3 to 6)"),
    ({"services.redis.replicas": 2}, "services.redis", "exactly 1"),
    ({"neon.sslmode": "disable"}, "neon.sslmode", "not allowed"),
    ({"neon.pooler_host": "ep-casera.local.neon"}, "neon.pooler_host", "-pooler"),
    ({"hetzner.api_endpoint": "http://127.0.0.1:18001"}, "hetzner.api_endpoint", "/v1"),
    ({"swarm.redis_node": 5}, "(top level)", "only 3 servers"),
    ({"ssh.port": _DELETE}, "ssh.port", "required key is missing"),
])
def test_bad_values_name_file_key_and_fix(tmp_path: Path, mutate: dict, key: str,
                                          words: str) -> None:
    path = _write(tmp_path, mutate)
    with pytest.raises(ParamsError) as caught:
        load_params("local", path=path)
    message = str(caught.value)
    assert str(path) in message and f": {key}: " in message and words in message
    assert "Fix: " in message


def test_firewall_without_esp_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params" / "local.yaml").read_text())
    raw["firewall"]["rules"] = [r for r in raw["firewall"]["rules"] if r["protocol"] != "esp"]
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="ESP"):
        load_params("local", path=path)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, {"hetzner.servr": 1, "ssh.port": "x", "services.api.replicas": 7})
    with pytest.raises(ParamsError) as caught:
        load_params("local", path=path)
    assert len(caught.value.issues) == 3


@pytest.mark.parametrize("mutate", [
    {"neon.password": "hunter2-abc"},
    {"hetzner.token": "abc"},
    {"cloudflare.zone": "postgres://casera:s3cret@db.example/casera"},
])
def test_secret_shaped_values_are_refused(tmp_path: Path, mutate: dict) -> None:
    path = _write(tmp_path, mutate)
    with pytest.raises(ParamsError) as caught:
        load_params("local", path=path)
    assert "secrets/local.env" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "s3cret" not in str(caught.value)


def test_a_known_secret_value_in_any_key_is_refused(tmp_path: Path) -> None:
    store = SecretStore("local", environ={"CASERA_HCLOUD_TOKEN": "tok-planted-981"},
                        file=tmp_path / "none.env")
    path = _write(tmp_path, {"hetzner.ssh_key_name": "tok-planted-981"})
    with pytest.raises(ParamsError) as caught:
        load_params("local", path=path, secrets=store)
    assert "hetzner.ssh_key_name: holds a secret value (not shown)" in str(caught.value)
    assert "tok-planted-981" not in str(caught.value)


def test_overrides_apply_and_are_validated() -> None:
    path = REPO / "params" / "local.yaml"
    assert load_params("local", {"services.api.replicas": 5}, path=path).services.api.replicas == 5
    with pytest.raises(ParamsError, match="override -p nope.x"):
        load_params("local", {"nope.x": 1}, path=path)
    assert parse_override("services.api.replicas=4") == ("services.api.replicas", 4)
    assert parse_override("swarm.overlay_encrypted=true") == ("swarm.overlay_encrypted", True)
    with pytest.raises(ParamsError):
        parse_override("no-equals-sign")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="does not exist"):
        load_params("local", path=tmp_path / "absent.yaml")
    broken = tmp_path / "local.yaml"
    broken.write_text("env: local\nhetzner: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params("local", path=broken)


# --- staging and production: what a real environment refuses ---------------------------

_FILLED = {"neon.project_id": "young-surf-48213957",
           "neon.pooler_host": "ep-quiet-lake-a1b2c3d4-pooler.eu-central-1.aws.neon.tech",
           "neon.direct_host": "ep-quiet-lake-a1b2c3d4.eu-central-1.aws.neon.tech",
           "ssh.operator_cidrs": ["84.17.42.9/32"]}


def _real(tmp_path: Path, env: str, mutate: dict) -> Path:
    raw = yaml.safe_load((REPO / "params" / f"{env}.yaml").read_text())
    for dotted, value in {**_FILLED, **mutate}.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = tmp_path / f"{env}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("env", ["staging", "production"])
def test_a_filled_in_real_env_loads_for_a_run(tmp_path: Path, env: str) -> None:
    params = load_params(env, path=_real(tmp_path, env, {}))
    assert params.neon.project_id == "young-surf-48213957"
    assert params.swarm.overlay_encrypted is True


@pytest.mark.parametrize("env", ["staging", "production"])
def test_the_committed_real_envs_are_refused_for_a_run_until_filled_in(env: str) -> None:
    path = REPO / "params" / f"{env}.yaml"
    with pytest.raises(ParamsError) as caught:
        load_params(env, path=path)
    keys = {issue.key for issue in caught.value.issues}
    assert keys == {"ssh.operator_cidrs[0]", "neon.project_id", "neon.pooler_host",
                    "neon.direct_host"}
    message = str(caught.value)
    assert f"{path}: ssh.operator_cidrs[0]: 203.0.113.10/32 is a documentation address" \
        in message
    assert f"{path}: neon.project_id: 'CHANGE-ME' is a placeholder" in message
    assert message.count("Fix: ") == 4


@pytest.mark.parametrize(("env", "mutate", "key", "words"), [
    ("staging", {"hetzner.api_endpoint": "http://api.hetzner.cloud/v1"},
     "hetzner.api_endpoint", "is plain http"),
    ("production", {"neon.api_endpoint": "http://console.neon.tech/api/v2"},
     "neon.api_endpoint", "is plain http"),
    ("production", {"b2.realm": "HTTP://127.0.0.1:18003"}, "b2.realm", "is plain http"),
    ("staging", {"cloudflare.api_base": "http://127.0.0.1:18004/client/v4"},
     "cloudflare.api_base", "is plain http"),
    ("production", {"swarm.overlay_encrypted": False}, "swarm.overlay_encrypted",
     "unencrypted"),
    ("staging", {"ssh.operator_cidrs": ["84.17.42.9/32", "198.51.100.0/24"]},
     "ssh.operator_cidrs[1]", "is a documentation address (198.51.100.0/24"),
    ("production", {"ssh.operator_cidrs": ["192.0.2.77/32"]}, "ssh.operator_cidrs[0]",
     "is a documentation address (192.0.2.0/24"),
    ("production", {"ssh.operator_cidrs": ["203.0.0.0/16"]}, "ssh.operator_cidrs[0]",
     "is a documentation address (203.0.113.0/24"),
    ("production", {"neon.project_id": "<your neon project>"}, "neon.project_id",
     "is a placeholder"),
    ("staging", {"neon.project_id": "TODO"}, "neon.project_id", "is a placeholder"),
    ("staging", {"cloudflare.zone": "change_me.example"}, "cloudflare.zone",
     "is a placeholder"),
])
def test_real_envs_refuse(tmp_path: Path, env: str, mutate: dict, key: str,
                          words: str) -> None:
    path = _real(tmp_path, env, mutate)
    with pytest.raises(ParamsError) as caught:
        load_params(env, path=path)
    message = str(caught.value)
    assert f"{path}: {key}: " in message and words in message, message
    assert [issue.key for issue in caught.value.issues] == [key]
    assert caught.value.issues[0].fix


def test_a_firewall_source_with_a_documentation_address_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load(_real(tmp_path, "production", {}).read_text())
    raw["firewall"]["rules"][1]["source"] = ["203.0.113.5/32"]
    path = tmp_path / "production.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"firewall\.rules\[1\]\.source\[0\]: 203\.0\.113"):
        load_params("production", path=path)


def test_an_override_is_held_to_the_same_rules(tmp_path: Path) -> None:
    path = _real(tmp_path, "production", {})
    with pytest.raises(ParamsError, match="swarm.overlay_encrypted: is false"):
        load_params("production", {"swarm.overlay_encrypted": False}, path=path)


def test_the_local_cloud_keeps_its_exceptions() -> None:
    """http endpoints, no ESP and documentation-free CIDRs are the local cloud's own."""
    local = load_params("local", path=REPO / "params" / "local.yaml")
    assert local.hetzner.api_endpoint.startswith("http://")
    assert local.swarm.overlay_encrypted is False


def test_a_run_on_staging_is_refused_with_exit_2_before_any_remote_call(tmp_path: Path) -> None:
    # A listening socket stands in for the Hetzner API: the refusal must come first.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        endpoint = f"https://127.0.0.1:{listener.getsockname()[1]}/v1"
        outputs = REPO / "outputs" / "staging" / "preflight"
        before = set(outputs.glob("*.ipynb")) if outputs.exists() else set()
        done = subprocess.run(
            [sys.executable, "-m", "casera.runner.cli", "run", "preflight", "--env", "staging",
             "-p", f"hetzner.api_endpoint={endpoint}"],
            capture_output=True, text=True, timeout=120, cwd=REPO,
            env={**os.environ, "CASERA_HCLOUD_TOKEN": "not-a-real-token-5521"})
        with pytest.raises(TimeoutError):
            listener.accept()
    assert done.returncode == 2, done.stderr
    assert "params/staging.yaml: neon.project_id: 'CHANGE-ME' is a placeholder" in done.stderr
    assert "ssh.operator_cidrs[0]: 203.0.113.10/32 is a documentation address" in done.stderr
    after = set(outputs.glob("*.ipynb")) if outputs.exists() else set()
    assert after == before


def test_the_pg_dump_key_is_required_and_secret_names_are_distinct(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params" / "local.yaml").read_text())
    keys = raw["b2"]["keys"]
    without = [k for k in keys if k.get("secret_name") != "pgdump"]
    assert len(without) == len(keys) - 1
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump({**raw, "b2": {**raw["b2"], "keys": without}}))
    with pytest.raises(ParamsError) as caught:
        load_params("local", path=path)
    assert "pg_dump on bucket backups with name_prefix 'postgres/'" in str(caught.value)
    assert "secret_name pgdump" in str(caught.value)
    # Two keys that would both be mounted as b2_backups_key_id/_key.
    pgdump = next(k for k in keys if k.get("secret_name") == "pgdump")
    doubled = [*keys, {**pgdump, "name": "casera-local-second", "secret_name": None}]
    path.write_text(yaml.safe_dump({**raw, "b2": {**raw["b2"], "keys": doubled}}))
    with pytest.raises(ParamsError, match="b2_backups_key_id/_key; give each a distinct"):
        load_params("local", path=path)
