"""The stack file renders to valid YAML, production keeps the seed's values, local switches
them explicitly, and settings that would deploy something unsafe are refused."""

from __future__ import annotations

import copy

import pytest
import yaml

from casera.errors import ParamsError
from casera.params import load_params
from casera.stack import (
    DOZZLE_PORT,
    SECRETS,
    SEED_NETWORK,
    SERVICES,
    StackSettings,
    StackSettingsError,
    render_stack,
    settings_from_params,
)
from casera.steps.swarm_secrets import b2_secret_names
from casera_localcloud.images import local_stack_settings
from casera_localcloud.images.recipes import APP_UID

DATABASE = {"host": "ep-casera-123456-pooler.eu-central-1.aws.neon.tech", "port": 5432,
            "name": "casera", "user": "casera_app", "sslmode": "require", "hostaddr": None}
SECRET_NAMES = {name: f"casera_{name}_v1" for name in SECRETS}


def production() -> StackSettings:
    return {
        "env": "production",
        "images": {name: f"ghcr.io/casera/{name}:1.4.2" for name in SERVICES},
        "replicas": {"api": 3, "worker": 2, "admin": 1, "redis": 1, "dozzle": 1, "backup": 1},
        "users": {"api": "10001:10001", "worker": "10001:10001", "admin": "10001:10001",
                  "redis": "redis", "dozzle": "10001:998", "backup": "10001:10001"},
        "healthchecks": {name: ["CMD", "/healthcheck"] for name in SERVICES},
        "secrets": dict(SECRET_NAMES),
        "database": dict(DATABASE),  # type: ignore[typeddict-item]
        "network": dict(SEED_NETWORK),  # type: ignore[typeddict-item]
        "backup": {"interval_s": 900, "prefix": "redis/", "realm": "production"},
    }


def local() -> StackSettings:
    return local_stack_settings(dict(SECRET_NAMES), docker_socket_gid=998)


def parsed(settings: StackSettings) -> dict:
    return yaml.safe_load(render_stack(settings))


def header(text: str) -> str:
    return text.split("version:")[0]


def test_production_keeps_the_seed_networking():
    text = render_stack(production())
    stack = yaml.safe_load(text)
    assert stack["version"] == "3.8"
    # Bootstrap makes (encrypted, as params say) and probes the overlay before the stack.
    assert stack["networks"]["casera"] == {"external": True, "name": "casera"}
    assert "overlay encryption: on (IPsec" in header(text)
    for name in SERVICES:
        if name != "dozzle":  # on the host network: no virtual IP to have (see below)
            assert stack["services"][name]["deploy"]["endpoint_mode"] == "vip", name
    assert stack["services"]["api"]["ports"] == [
        {"target": 8080, "published": 80, "protocol": "tcp", "mode": "ingress"}]


def test_local_switches_networking_explicitly_and_says_so():
    text = render_stack(local())
    stack = yaml.safe_load(text)
    # The network is bootstrap's (unencrypted there, as params say); the stack only names it.
    assert stack["networks"]["casera"] == {"external": True, "name": "casera"}
    assert "driver_opts" not in text
    for name in SERVICES:
        assert stack["services"][name]["deploy"]["endpoint_mode"] == "dnsrr"
    assert stack["services"]["api"]["ports"][0]["mode"] == "host"
    assert "overlay encryption: OFF" in header(text)
    assert "dnsrr" in header(text)  # stated in the header a reviewer reads
    assert stack["services"]["api"]["image"].startswith("10.77.0.1:5000/casera/api:")
    # params/local.yaml's users are the ones the stand-in images were built with.
    for name in ("api", "worker", "admin"):
        assert stack["services"][name]["user"] == f"{APP_UID}:{APP_UID}"
    assert stack["services"]["dozzle"]["user"] == f"{APP_UID}:998"


@pytest.mark.parametrize("make", [production, local])
def test_services_are_placed_updated_and_checked_as_the_seed_says(make):
    stack = parsed(make())
    services = stack["services"]
    assert set(services) == set(SERVICES)
    redis = services["redis"]
    assert redis["deploy"]["placement"]["constraints"] == ["node.labels.casera.redis == true"]
    assert redis["volumes"] == ["redis-data:/data"]
    assert stack["volumes"]["redis-data"]["name"] == "casera-redis-data"
    assert redis["deploy"]["update_config"]["order"] == "stop-first"  # one writer per volume
    assert "--appendonly" in redis["command"] and "everysec" in redis["command"]
    dozzle = services["dozzle"]
    assert dozzle["deploy"]["placement"]["constraints"] == ["node.role == manager"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in dozzle["volumes"]
    assert [name for name, svc in services.items() if "ports" in svc] == ["api"]
    # A host-mode port is held by one task per node: a start-first api update would hang.
    host_mode = services["api"]["ports"][0]["mode"] == "host"
    for name in ("api", "worker", "admin"):
        deploy = services[name]["deploy"]
        order = "stop-first" if name == "api" and host_mode else "start-first"
        assert deploy["update_config"]["order"] == order, name
        assert deploy["rollback_config"]["order"] == order, name
        assert deploy["update_config"]["failure_action"] == "rollback"
        assert deploy["rollback_config"]["parallelism"] == 1
        assert services[name]["networks"] == ["casera"]
    for name, svc in services.items():
        assert svc["healthcheck"]["test"][0] == "CMD", name
        assert svc["user"].split(":")[0] not in ("0", "root"), name
        assert svc["deploy"]["replicas"] == make()["replicas"][name]


@pytest.mark.parametrize("env", ["production", "staging", "local"])
def test_dozzle_listens_on_the_managers_loopback_only(env):
    # Swarm cannot publish on 127.0.0.1 (moby/moby#32299: it binds 0.0.0.0), so Dozzle shares
    # the node's network and listens on its loopback: an SSH tunnel reaches it, nothing else.
    stack = parsed(settings_from_params(load_params(env, for_run=False), secrets=dict(SECRET_NAMES),
                                        docker_socket_gid=998))
    dozzle = stack["services"]["dozzle"]
    assert dozzle["environment"]["DOZZLE_ADDR"] == f"127.0.0.1:{DOZZLE_PORT}"
    assert dozzle["networks"] == ["hostnet"]
    assert stack["networks"]["hostnet"] == {"external": True, "name": "host"}
    assert "ports" not in dozzle  # nothing published: a published port binds every address
    assert dozzle["deploy"]["endpoint_mode"] == "dnsrr"  # no virtual IP on the host network
    # One 127.0.0.1:9999 per node: the old task must let go before the new one binds.
    assert dozzle["deploy"]["update_config"]["order"] == "stop-first"
    assert dozzle["deploy"]["rollback_config"]["order"] == "stop-first"
    assert dozzle["deploy"]["placement"]["constraints"] == ["node.role == manager"]
    # Only Dozzle is on the host network; every other service stays on the overlay.
    on_host = [name for name, svc in stack["services"].items() if "hostnet" in svc["networks"]]
    assert on_host == ["dozzle"]
    # The healthcheck must ask the address Dozzle listens on (the node's loopback).
    test = " ".join(dozzle["healthcheck"]["test"])
    assert "/dozzle healthcheck" in test or f"127.0.0.1:{DOZZLE_PORT}" in test, test


def test_secrets_are_external_versioned_and_mounted_by_role_name():
    settings = production()
    settings["secrets"]["db_password"] = "casera_db_password_v2"  # after a rotation
    stack = parsed(settings)
    assert stack["secrets"]["db_password"] == {"external": True,
                                               "name": "casera_db_password_v2"}
    assert all(stack["secrets"][name]["external"] is True for name in SECRETS)
    for service in ("api", "worker"):
        mounted = {s["source"]: s["target"] for s in stack["services"][service]["secrets"]}
        assert mounted["db_password"] == "db_password"
        env = stack["services"][service]["environment"]
        assert "DB_PASSWORD" not in env  # the value only ever comes from the secret file
        assert env["DB_SSLMODE"] == "require"
    assert "secrets" not in stack["services"]["dozzle"]


def test_values_cannot_break_the_yaml_around_them():
    settings = production()
    settings["database"]["host"] = 'evil: "x"\n  injected: true'
    stack = parsed(settings)
    assert stack["services"]["api"]["environment"]["DB_HOST"] == 'evil: "x"\n  injected: true'
    assert "injected" not in stack["services"]["api"]


@pytest.mark.parametrize("change, message", [
    (lambda s: s["replicas"].update(api=2), "replicas.api"),
    (lambda s: s["replicas"].update(worker=4), "replicas.worker"),
    (lambda s: s["replicas"].update(redis=2), "replicas.redis"),
    (lambda s: s["users"].update(dozzle="root"), "users.dozzle"),
    (lambda s: s["users"].update(api="0:0"), "users.api"),
    (lambda s: s["secrets"].pop("apns_key"), "secrets"),
    (lambda s: s["images"].pop("worker"), "images"),
    (lambda s: s["healthchecks"].update(api=["curl", "x"]), "healthchecks.api"),
    (lambda s: s["database"].update(sslmode="disable"), "database.sslmode"),
    (lambda s: s["network"].update(endpoint_mode="dnsrr"), "endpoint_mode dnsrr"),
    (lambda s: s.update(api_drain_s=601), "api_drain_s"),
    (lambda s: s.update(api_drain_s=-1), "api_drain_s"),
])
def test_unsafe_settings_are_refused_naming_the_key(change, message):
    settings = copy.deepcopy(production())
    change(settings)
    with pytest.raises(StackSettingsError, match=message):
        render_stack(settings)


@pytest.mark.parametrize("env", ["production", "staging", "local"])
def test_renders_from_the_real_params_files(env):
    params = load_params(env, for_run=False)
    settings = settings_from_params(params, secrets=dict(SECRET_NAMES), docker_socket_gid=998)
    text = render_stack(settings)
    stack = yaml.safe_load(text)
    assert stack["networks"]["casera"] == {"external": True,
                                           "name": params.swarm.overlay_network}
    # Encryption is the network's (bootstrap makes it from params); the header says which.
    assert ("overlay encryption: on (IPsec" in header(text)) is params.swarm.overlay_encrypted
    assert ("overlay encryption: OFF" in header(text)) is not params.swarm.overlay_encrypted
    assert stack["services"]["api"]["ports"][0]["mode"] == params.swarm.publish_mode
    assert stack["services"]["api"]["ports"][0]["published"] == params.swarm.api_published_port
    assert stack["services"]["api"]["environment"]["DB_HOST"] == params.neon.pooler_host
    for name in SERVICES:
        service = getattr(params.services, name)
        assert stack["services"][name]["healthcheck"]["test"] == service.healthcheck, name
        expected_user = (f"{service.user.split(':')[0]}:998" if name == "dozzle"
                         else service.user)
        assert stack["services"][name]["user"] == expected_user, name
        assert stack["services"][name]["image"] == service.image, name
    if env != "local":  # the seed's values, untouched
        assert params.swarm.overlay_encrypted is True
        assert stack["services"]["api"]["deploy"]["endpoint_mode"] == "vip"
        assert stack["services"]["api"]["ports"][0]["mode"] == "ingress"
    else:
        assert params.swarm.overlay_encrypted is False
        assert stack["services"]["api"]["deploy"]["endpoint_mode"] == "dnsrr"


def test_db_host_pinned_by_extra_hosts_only_where_params_say():
    local_stack = parsed(local())
    params = load_params("local")
    assert params.neon.node_hostaddr
    pinned = [f"{params.neon.pooler_host}:{params.neon.node_hostaddr}"]
    for name in ("api", "worker"):
        assert local_stack["services"][name]["extra_hosts"] == pinned, name
    prod_stack = parsed(settings_from_params(load_params("production", for_run=False),
                                             secrets=dict(SECRET_NAMES), docker_socket_gid=998))
    for stack in (local_stack, prod_stack):
        for name in ("admin", "redis", "dozzle"):
            assert not stack["services"][name].get("extra_hosts"), name
    for name in ("api", "worker"):
        assert not prod_stack["services"][name].get("extra_hosts"), name  # real DNS


def test_only_the_api_gets_the_uploads_key():
    stack = parsed(production())
    services = stack["services"]
    mounted = {name: {s["source"] for s in services[name].get("secrets", [])}
               for name in services}
    backup_keys = {"b2_backups_key_id", "b2_backups_key", "b2_pgdump_key_id", "b2_pgdump_key"}
    assert mounted["api"] == set(SECRETS) - backup_keys
    # The backup job holds only the backups keys (snapshots, dumps) and the database password
    # pg_dump needs: never the app's uploads or certs keys, nor its SECRET_KEY.
    assert mounted["backup"] == backup_keys | {"db_password"}
    assert mounted["worker"] == {"db_password", "secret_key", "b2_certs_key_id", "b2_certs_key",
                                 "apns_key"}
    assert not mounted["admin"] and not mounted["redis"] and not mounted["dozzle"]
    for name in ("api", "worker", "backup"):
        # The apps look up exactly what is mounted, no more (a missing file would read "missing").
        listed = services[name]["environment"]["CASERA_SECRET_NAMES"].split(",")
        assert set(listed) == mounted[name], name
        assert all(s["target"] == s["source"] for s in services[name]["secrets"])
    assert set(stack["secrets"]) == set(SECRETS)


@pytest.mark.parametrize("env", ["production", "staging", "local"])
def test_b2_key_mounts_agree_with_the_params_key_table(env):
    # The template decides who mounts which key; params' b2.keys[].for_services says the same
    # thing for the B2 step. The two must not drift apart.
    params = load_params(env, for_run=False)
    stack = parsed(settings_from_params(params, secrets=dict(SECRET_NAMES), docker_socket_gid=998))
    for key in params.b2.keys:
        for part in b2_secret_names(key):
            assert part in SECRETS
            mounting = {name for name, svc in stack["services"].items()
                        if part in {s["source"] for s in svc.get("secrets", [])}}
            assert mounting == set(key.for_services), (key.name, part)


@pytest.mark.parametrize("env, window", [
    # (retries + 1) * interval + timeout of each file's edge.health_check
    ("production", 4 * 10 + 5), ("local", 2 * 3 + 2)])
def test_the_api_drains_for_the_lbs_health_check_window(env, window):
    params = load_params(env, for_run=False)
    assert params.lb_unhealthy_after_s() == window
    api = parsed(settings_from_params(params, secrets=dict(SECRET_NAMES),
                                      docker_socket_gid=998))["services"]["api"]
    assert api["environment"]["DRAIN_S"] == str(window)
    # Docker must not kill the task before the drain and the requests in flight are done.
    assert api["stop_grace_period"] == f"{window + 10}s"


@pytest.mark.parametrize("env, interval, delay, monitor", [("production", "10s", "10s", "30s"),
                                                           ("local", "4s", "5s", "10s")])
def test_roll_out_pace_comes_from_params(env, interval, delay, monitor):
    stack = parsed(settings_from_params(load_params(env, for_run=False),
                                        secrets=dict(SECRET_NAMES), docker_socket_gid=998))
    # Every service: one checked every 30 s held a fresh stack's convergence for 30 s.
    for name in ("api", "worker", "admin", "redis", "dozzle", "backup"):
        assert stack["services"][name]["healthcheck"]["interval"] == interval, name
    for name in ("api", "worker", "admin"):
        assert stack["services"][name]["deploy"]["update_config"]["delay"] == delay, name
    for name, service in stack["services"].items():
        deploy = service["deploy"]
        assert deploy["update_config"]["monitor"] == monitor, name
        assert deploy["rollback_config"]["monitor"] == monitor, name


def test_a_host_mode_roll_out_waits_until_the_lb_counts_the_new_task_healthy():
    # local: 1 x (3 + 2) s for the LB; a 4 s pause would stop the next task too early.
    with pytest.raises(ParamsError, match=r"stack.update_delay_s \(4\) is shorter than the LB "
                                          r"needs to count a new api task healthy \(5 s"):
        load_params("local", for_run=False, overrides={"stack.update_delay_s": 4})
    # Ingress (production): the LB's targets are nodes, not tasks, so no such bound.
    assert load_params("production", for_run=False,
                       overrides={"stack.update_delay_s": 0}).stack.update_delay_s == 0


def test_without_a_load_balancer_the_api_stops_at_once():
    params = load_params("production", for_run=False,
                         overrides={"load_balancer.enabled": False, "edge": None})
    assert params.lb_unhealthy_after_s() == 0
    settings = production()
    assert "api_drain_s" not in settings
    api = parsed(settings)["services"]["api"]
    assert api["environment"]["DRAIN_S"] == "0" and api["stop_grace_period"] == "10s"
