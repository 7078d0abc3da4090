"""The local Neon's branch roles, driven through the product's provider (casera.providers.neon)
as the DB password rotation drives them: a role made through the API logs in (direct and
through the pooler) with the password only its answer holds; reset_password refuses the old
password at once and drops the compute's connections while an idle pooled client goes on;
the second role acting as the owner shares every privilege; bad requests get Neon's errors
and change nothing."""

from __future__ import annotations

import psycopg
import pytest

from casera.errors import ProviderError
from casera.operator_secrets import Secret
from casera.providers import neon, postgres

pytestmark = pytest.mark.localcloud

PROJECT = "casera-local"
MAIN = "br-casera-local-main"
ALT = "casera_alt"


def client(env) -> neon.NeonClient:
    return neon.NeonClient(env.api_url, Secret("neon_api_key", env.api_key))


def login(env, port: int, role: str, password: str) -> psycopg.Connection:
    return psycopg.connect(**env.conninfo(port, user=role, password=password),
                           connect_timeout=5, prepare_threshold=None, autocommit=True)


def refused(env, port: int, role: str, password: str) -> str:
    with pytest.raises(psycopg.OperationalError) as caught:
        login(env, port, role, password).close()
    return str(caught.value)


@pytest.fixture
def alt_role(neon_env):
    api = client(neon_env)
    if ALT in api.roles(PROJECT, MAIN):
        api.delete_role(PROJECT, MAIN, ALT)
    password = api.create_role(PROJECT, MAIN, ALT)
    yield api, password
    if ALT in api.roles(PROJECT, MAIN):
        api.delete_role(PROJECT, MAIN, ALT)


def test_a_new_role_logs_in_with_the_password_its_answer_holds(neon_env, alt_role):
    api, password = alt_role
    assert password.reveal().startswith("npg_") and len(password.reveal()) >= 16
    assert repr(password) == "Secret(db role casera_alt=********)"
    assert set(api.roles(PROJECT, MAIN)) >= {"casera", ALT}
    role = api.get_role(PROJECT, MAIN, ALT)
    assert role is not None and role["name"] == ALT and role["branch_id"] == MAIN
    assert "password" not in role  # only the answers that make a password carry it
    for port in (neon_env.pooler_port, neon_env.pg_port):
        with login(neon_env, port, ALT, password.reveal()) as conn:
            # As on Neon: a member of neon_superuser with CREATEROLE, never superuser.
            row = conn.execute("SELECT rolsuper, rolcreaterole, pg_has_role(current_user, "
                               "'neon_superuser', 'MEMBER') FROM pg_roles WHERE rolname = "
                               "current_user").fetchone()
            assert row == (False, True, True)
    assert "authentication failed" in refused(neon_env, neon_env.pooler_port, ALT,
                                                       "npg_not-the-password")


def test_reset_password_refuses_the_old_one_at_once_and_idle_pooled_clients_go_on(
        neon_env, alt_role):
    api, old = alt_role
    # A client of the pooler, connected and idle between transactions (as the app's open
    # connections are), and a direct session that Neon's reset drops.
    pooled = login(neon_env, neon_env.pooler_port, "casera", neon_env.password)
    direct = login(neon_env, neon_env.pg_port, "casera", neon_env.password)
    assert pooled.execute("SELECT 1").fetchone() == (1,)
    new = api.reset_role_password(PROJECT, MAIN, ALT)
    assert new.reveal() != old.reveal()
    for port in (neon_env.pooler_port, neon_env.pg_port):
        assert "authentication failed" in refused(neon_env, port, ALT, old.reveal())
        with login(neon_env, port, ALT, new.reveal()) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (ALT,)
    # "Connections to the compute endpoint are dropped" (Neon's reset_password).
    with pytest.raises(psycopg.OperationalError):
        direct.execute("SELECT 1")
    direct.close()
    # The pooled client's next transactions run (PgBouncer opens new server connections;
    # one that meets a dropped one is what the app's retry_dropped is for).
    answers = []
    for _ in range(3):
        try:
            answers.append(pooled.execute("SELECT 2").fetchone())
        except psycopg.OperationalError:
            answers.append(None)
    pooled.close()
    assert answers[-1] == (2,), answers
    # The other roles are untouched.
    with login(neon_env, neon_env.pooler_port, "casera", neon_env.password):
        pass


def test_the_second_role_acts_as_the_owner_with_every_privilege(neon_env, alt_role):
    api, password = alt_role
    owner = Secret("db_password", neon_env.password)
    with postgres.connect("127.0.0.1", neon_env.pg_port, "casera", "casera", owner,
                          "require") as conn:
        conn.autocommit = True
        assert not postgres.acts_as(conn, ALT, "casera")
        postgres.make_act_as(conn, ALT, "casera")  # as the owner: CREATEROLE, no superuser
        assert postgres.acts_as(conn, ALT, "casera")
        conn.execute("DROP TABLE IF EXISTS rotation_probe")
    with login(neon_env, neon_env.pooler_port, ALT, password.reveal()) as conn:
        assert conn.execute("SELECT session_user, current_user").fetchone() == (ALT, "casera")
        # What the second role creates is the owner's; it may alter the owner's tables.
        conn.execute("CREATE TABLE rotation_probe (id bigserial PRIMARY KEY, n int)")
        conn.execute("INSERT INTO rotation_probe (n) VALUES (1)")
    with login(neon_env, neon_env.pg_port, "casera", neon_env.password) as conn:
        owner_of = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = "
                                "'rotation_probe'").fetchone()
        assert owner_of == ("casera",)
        conn.execute("ALTER TABLE rotation_probe ADD COLUMN IF NOT EXISTS m int")
        assert conn.execute("SELECT count(*) FROM rotation_probe").fetchone() == (1,)
        conn.execute("DROP TABLE rotation_probe")


@pytest.mark.parametrize(("call", "words"), [
    (lambda api: api.reset_role_password(PROJECT, MAIN, "nobody"), "HTTP 404: role 'nobody' "
     "not found"),
    (lambda api: api.delete_role(PROJECT, MAIN, "nobody"), "HTTP 404: role 'nobody'"),
    (lambda api: api.create_role(PROJECT, MAIN, "casera"), "HTTP 409: role 'casera' already"),
    (lambda api: api.create_role(PROJECT, MAIN, "pg_mine"), "HTTP 400: role.name 'pg_mine' is "
     "reserved"),
    (lambda api: api.create_role(PROJECT, MAIN, "neon_superuser"), "is reserved"),
    (lambda api: api.create_role(PROJECT, MAIN, "r" * 64), "at most 63 bytes"),
    (lambda api: api.create_role(PROJECT, MAIN, ""), "role.name must not be empty"),
    (lambda api: api.create_role(PROJECT, "br-none", "x"), "HTTP 404: branch br-none not found"),
    (lambda api: api.create_role("no-such", MAIN, "x"), "HTTP 404: project no-such not found"),
    (lambda api: api.delete_role(PROJECT, MAIN, "casera"), "HTTP 400: role 'casera' owns "
     "database"),
])
def test_bad_role_requests_get_neons_errors_and_change_nothing(neon_env, call, words):
    api = client(neon_env)
    before = api.roles(PROJECT, MAIN)
    with pytest.raises(ProviderError, match=words.replace("(", r"\(")) as caught:
        call(api)
    assert caught.value.system == "neon" and isinstance(caught.value.details, dict)
    assert set(caught.value.details) == {"code", "message"}
    assert api.roles(PROJECT, MAIN) == before
    assert api.get_role(PROJECT, MAIN, "nobody") is None
    with login(neon_env, neon_env.pooler_port, "casera", neon_env.password):
        pass


def test_deleting_a_role_refuses_its_logins(neon_env, alt_role):
    api, password = alt_role
    api.delete_role(PROJECT, MAIN, ALT)
    assert ALT not in api.roles(PROJECT, MAIN)
    assert "authentication failed" in refused(neon_env, neon_env.pooler_port, ALT,
                                                       password.reveal())
