"""The rotation runbook's input checks and bookkeeping, without a cloud: a bad selection or
rotation id is refused before anything remote, by name; Docker's nanosecond CreatedAt parses;
the B2 key store records which rotation made a key, atomically with the key; the DB role store
keeps the new credential, its rotation and the replaced one in one write, and which login
role the app uses decides the idle one."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from steps_harness import make_ctx

from casera.b2_keys import B2KeyStore
from casera.db_roles import (
    DbCredential,
    DbRoleStore,
    alternate_role,
    app_credential,
    app_role,
    role_store,
)
from casera.errors import CaseraError, StepFailed
from casera.operator_secrets import Secret
from casera.steps import secret_rotation


def test_selection_defaults_to_every_class_and_todays_rotation() -> None:
    ctx = make_ctx({}, {})
    chosen = secret_rotation.select(ctx)
    assert chosen.classes == ("db_password", "secret_key", "b2_keys", "apns_key")
    assert chosen.rotation_id == datetime.now(UTC).strftime("%Y-%m-%d")
    assert secret_rotation.select(ctx, "apns_key", "r1").classes == ("apns_key",)
    assert secret_rotation.select(ctx, "apns_key,secret_key").classes == ("secret_key",
                                                                          "apns_key")
    names = secret_rotation.secret_names(ctx, secret_rotation.select(ctx, "b2_keys"))
    assert names and all(n.startswith("b2_") for n in names)
    db = secret_rotation.select(ctx, "apns_key,db_password")
    assert db.classes == ("db_password", "apns_key")
    assert secret_rotation.secret_names(ctx, db) == ["db_password", "apns_key"]
    assert "db_password" in secret_rotation.secret_names(ctx, chosen)


@pytest.mark.parametrize(("secrets", "rotation", "says"), [
    ("apns", "", r"secrets: apns unknown; use all or a comma list of db_password"),
    (" , ", "", r"name the secrets to rotate"),
    ("db_pasword", "", r"secrets: db_pasword unknown; use all or a comma list of "
                       r"db_password, secret_key, b2_keys, apns_key"),
    ("all", "two words", r"rotation='two words': 1-40 letters"),
    ("all", "x" * 41, r"rotation="),
])
def test_bad_selection_is_refused_naming_the_parameter(secrets: str, rotation: str,
                                                       says: str) -> None:
    with pytest.raises(CaseraError, match=says):
        secret_rotation.select(make_ctx({}, {}), secrets, rotation)


def test_docker_created_at_with_nanoseconds_parses() -> None:
    now = datetime(2026, 12, 2, 18, 0, 0, tzinfo=UTC)
    assert secret_rotation.age_h("2026-12-02T17:00:00.123456789Z", now) == pytest.approx(
        1, abs=1e-3)
    assert secret_rotation.age_h("2026-12-01T18:00:00Z", now) == pytest.approx(24)
    assert secret_rotation.age_h("2026-12-02T19:00:00+02:00", now) == pytest.approx(1)
    with pytest.raises(CaseraError, match=re.escape("'yesterday' is not RFC 3339")):
        secret_rotation.age_h("yesterday", now)


def test_key_store_records_the_rotation_with_the_key(tmp_path: Path) -> None:
    store = B2KeyStore(tmp_path / "local.b2-keys.env")
    store.put("uploads", "id-1", Secret("k", "secret-one-0123"))
    assert store.rotation("uploads") is None
    store.put("uploads", "id-2", Secret("k", "secret-two-0123"), retiring=["id-1"],
              rotation="2026-12-02")
    assert store.rotation("uploads") == "2026-12-02"
    assert store.retiring() == {"uploads": ["id-1"]}
    # A key stored without a rotation (the bootstrap replacing a lost key) drops the marker:
    # the next rotation must make a new key.
    store.put("uploads", "id-3", Secret("k", "secret-three-01"))
    assert store.rotation("uploads") is None
    store.put("uploads", "id-4", Secret("k", "secret-four-012"), rotation="r")
    store.forget("uploads")
    assert store.rotation("uploads") is None and store.load() == {}


def test_db_role_store_keeps_the_new_credential_with_the_replaced_one(tmp_path: Path) -> None:
    store = DbRoleStore(tmp_path / "local.db-role.env")
    assert store.current() is None and store.retiring() is None and store.values() == []
    store.put(DbCredential("casera_alt", Secret("db_password", "npg_new0123456789")), "r1",
              retiring=DbCredential("casera", Secret("db_password", "old-password-0123")))
    assert store.current() == DbCredential("casera_alt",
                                           Secret("db_password", "npg_new0123456789"))
    assert store.rotation() == "r1"
    assert store.retiring() == DbCredential("casera", Secret("db_password",
                                                              "old-password-0123"))
    assert sorted(store.values()) == ["npg_new0123456789", "old-password-0123"]
    assert (store.path.stat().st_mode & 0o777) == 0o600
    store.retired()
    assert store.retiring() is None and store.rotation() == "r1"
    assert store.values() == ["npg_new0123456789"]
    # What a repr or a log line of it shows: never the password.
    assert "npg_new" not in repr(store.current())


def test_a_broken_db_role_store_line_is_named_without_its_content(tmp_path: Path) -> None:
    path = tmp_path / "local.db-role.env"
    path.write_text("DB_ROLE=casera_alt\nnpg_leaked_password\n")
    with pytest.raises(CaseraError, match=r"local.db-role.env:2: not KEY=VALUE") as caught:
        DbRoleStore(path).current()
    assert "npg_leaked" not in str(caught.value)


def test_the_idle_role_is_the_one_the_app_does_not_use(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASERA_PROJECT_DIR", str(tmp_path))
    ctx = make_ctx({}, {"CASERA_DB_PASSWORD": "operator-password-1"})
    owner = ctx.params.neon.role
    assert alternate_role(owner) == f"{owner}_alt"
    # Before any rotation: neon.role with CASERA_DB_PASSWORD.
    assert app_credential(ctx) == DbCredential(owner, Secret("db_password",
                                                             "operator-password-1"))
    assert secret_rotation._roles_pair(ctx) == (owner, f"{owner}_alt")
    store = role_store("local")
    store.put(DbCredential(f"{owner}_alt", Secret("db_password", "npg_a0123456789")), "r1",
              retiring=app_credential(ctx))
    assert app_role(ctx) == f"{owner}_alt"
    assert secret_rotation._roles_pair(ctx) == (f"{owner}_alt", owner)
    # A store naming a third role is refused, naming the file, before anything remote.
    store.put(DbCredential("someone", Secret("db_password", "npg_b0123456789")), "r2",
              retiring=app_credential(ctx))
    with pytest.raises(StepFailed, match=r"local.db-role.env: DB_ROLE=someone is neither"):
        secret_rotation._roles_pair(ctx)
