"""Params: every shipped file validates; every kind of bad input names file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from casera.errors import ParamsError
from casera.params import REPLICA_RANGES, load_params, parse_override
from casera.secrets import SecretStore

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("env", ["local", "staging", "production"])
def test_shipped_params_are_valid(env: str) -> None:
    params = load_params(env, path=REPO / "params" / f"{env}.yaml")
    assert params.env == env
    assert params.hetzner.server_count == 3 and params.hetzner.server_type == "cx33"
    for name, (low, high) in REPLICA_RANGES.items():
        assert low <= getattr(params.services, name).replicas <= high
    assert any(rule.protocol == "esp" for rule in params.firewall.rules)
    assert params.neon.sslmode in ("require", "verify-full")


def test_production_keeps_the_seeds_values_and_local_says_why_not() -> None:
    prod = load_params("production", path=REPO / "params" / "production.yaml")
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
    ({"hetzner.server_count": 4}, "hetzner.server_count", "keep the manager count odd"),
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
