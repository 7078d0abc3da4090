"""``stack.secrets_source``: the legacy before-state (values in env vars, nothing mounted), the
secret migration's first roll (both), and the plan (files only, owned by the app's user,
0400). The values appear in a rendered file only where the source says, and nowhere in what
the stack step shows."""

from __future__ import annotations

import pytest
import yaml

from casera.operator_secrets import MASK, Secret
from casera.params import load_params
from casera.stack import (
    SECRETS,
    SERVICE_SECRETS,
    StackSettingsError,
    render_stack,
    secret_env_in,
    settings_from_params,
)
from casera.steps.secret_migration import SECRET_SHAPED
from casera.steps.stack import _file_diff

NAMES = {name: f"casera_{name}_v3" for name in SECRETS}
# Planted values: one with a $ (compose interpolates it), one with a quote and a newline.
VALUES = {name: Secret(name, f"planted-{name}-9c41e") for name in SECRETS}
VALUES["secret_key"] = Secret("secret_key", "pl$nted-$HOME-${X}-key")
VALUES["apns_key"] = Secret("apns_key", '-----BEGIN KEY-----\n"q"\n-----END KEY-----')


def render(source: str) -> str:
    params = load_params("local", for_run=False)
    return render_stack(settings_from_params(
        params, secrets=dict(NAMES), docker_socket_gid=998, secrets_source=source,  # type: ignore[arg-type]
        secret_values=dict(VALUES)))


def compose_env(value: str) -> str:
    """What `docker stack deploy` makes of a value in the file: $$ is a literal $."""
    return value.replace("$$", "$")


def test_docker_secrets_mounts_files_for_the_app_user_and_no_value_anywhere():
    text = render("docker_secrets")
    stack = yaml.safe_load(text)
    for service, names in SERVICE_SECRETS.items():
        svc = stack["services"][service]
        uid, gid = svc["user"].split(":")
        assert svc["secrets"] == [{"source": n, "target": n, "uid": uid, "gid": gid,
                                   "mode": 0o400} for n in names]
        assert not set(svc["environment"]) & {n.upper() for n in SECRETS}
    assert stack["secrets"] == {n: {"external": True, "name": NAMES[n]} for n in SECRETS}
    assert not any(v.reveal() in text for v in VALUES.values())
    assert "secrets" not in stack["services"]["admin"]


def test_legacy_env_puts_each_value_in_its_env_var_and_mounts_nothing():
    stack = yaml.safe_load(render("legacy_env"))
    assert stack["secrets"] == {}
    for service, names in SERVICE_SECRETS.items():
        svc = stack["services"][service]
        assert svc["secrets"] == []
        env = svc["environment"]
        for name in names:
            assert compose_env(env[name.upper()]) == VALUES[name].reveal(), name
        # Only the service's own: the worker never gets the uploads key, the api no backup key.
        assert {k for k in env if k.lower() in SECRETS} == {n.upper() for n in names}


def test_both_keeps_the_env_vars_and_adds_the_files():
    stack = yaml.safe_load(render("both"))
    api = stack["services"]["api"]
    assert len(api["secrets"]) == len(SERVICE_SECRETS["api"])
    assert compose_env(api["environment"]["DB_PASSWORD"]) == VALUES["db_password"].reveal()


def test_bad_source_and_missing_values_are_refused_naming_the_key():
    params = load_params("local", for_run=False)
    with pytest.raises(StackSettingsError, match="secrets_source: 'env'"):
        render_stack(settings_from_params(params, secrets=dict(NAMES), docker_socket_gid=998,
                                          secrets_source="env"))  # type: ignore[arg-type]
    with pytest.raises(StackSettingsError, match="secret_values: missing"):
        render_stack(settings_from_params(params, secrets={}, docker_socket_gid=998,
                                          secrets_source="legacy_env", secret_values={}))


def test_params_switch_is_validated_with_the_file_and_key():
    from casera.errors import ParamsError

    with pytest.raises(ParamsError, match=r"local\.yaml: stack\.secrets_source: 'env' is not "
                                          "allowed"):
        load_params("local", overrides={"stack.secrets_source": "env"}, for_run=False)
    assert load_params("local", for_run=False).stack.secrets_source == "docker_secrets"


def test_the_stack_steps_diff_of_a_legacy_file_masks_every_value():
    legacy, normal = render("legacy_env"), render("docker_secrets")
    older = legacy.replace("planted-db_password-9c41e", "an-old-value-the-store-lost")
    for old, new in ((normal, legacy), (legacy, normal), (older, legacy)):
        shown = "\n".join(_file_diff(old, new, [VALUES["db_password"].reveal()]))
        assert "DB_PASSWORD" in shown or "only secret values differ" in shown
        assert MASK in shown or old is legacy or "not shown" in shown
        for value in [*(v.reveal() for v in VALUES.values()), "an-old-value-the-store-lost",
                      "pl$$nted", "planted-"]:
            assert value not in shown


def test_inventory_names():
    spec = {"Env": ["DB_PASSWORD=x", "SECRET_KEY=y", "CASERA_SECRET_NAMES=db_password",
                    "DB_USER=casera", "STRIPE_TOKEN=z"]}
    assert secret_env_in(spec) == ["DB_PASSWORD", "SECRET_KEY"]
    shaped = [n for n in ("DB_PASSWORD", "CASERA_SECRET_NAMES", "DB_USER", "STRIPE_TOKEN",
                          "B2_UPLOADS_KEY_ID", "APNS_KEY", "REDIS_HOST") if SECRET_SHAPED.search(n)]
    assert shaped == ["DB_PASSWORD", "STRIPE_TOKEN", "B2_UPLOADS_KEY_ID", "APNS_KEY"]


def test_an_accepted_secret_key_is_mounted_beside_it_where_secret_key_is():
    params = load_params("local", for_run=False)
    names = {**NAMES, "secret_key_accept": "casera_secret_key_v2"}
    stack = yaml.safe_load(render_stack(settings_from_params(
        params, secrets=names, docker_socket_gid=998)))
    assert stack["secrets"]["secret_key_accept"] == {"external": True,
                                                     "name": "casera_secret_key_v2"}
    for service, wanted in SERVICE_SECRETS.items():
        targets = [m["target"] for m in stack["services"][service]["secrets"]]
        extra = ["secret_key_accept"] if "secret_key" in wanted else []
        assert targets == [*wanted, *extra], service
    with pytest.raises(StackSettingsError, match="unknown \\['secret_key_next'\\]"):
        render_stack(settings_from_params(params, secrets={**NAMES, "secret_key_next": "x"},
                                          docker_socket_gid=998))
