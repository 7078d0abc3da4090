"""The rotation runbook's input checks and bookkeeping, without a cloud: a bad selection or
rotation id is refused before anything remote, by name; Docker's nanosecond CreatedAt parses;
the B2 key store records which rotation made a key, atomically with the key."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from steps_harness import make_ctx

from casera.b2_keys import B2KeyStore
from casera.errors import CaseraError
from casera.operator_secrets import Secret
from casera.steps import secret_rotation


def test_selection_defaults_to_every_built_class_and_todays_rotation() -> None:
    ctx = make_ctx({}, {})
    chosen = secret_rotation.select(ctx)
    assert chosen.classes == secret_rotation.BUILT
    assert chosen.rotation_id == datetime.now(UTC).strftime("%Y-%m-%d")
    assert secret_rotation.select(ctx, "apns_key", "r1").classes == ("apns_key",)
    assert secret_rotation.select(ctx, "apns_key,secret_key").classes == ("secret_key",
                                                                          "apns_key")
    names = secret_rotation.secret_names(ctx, secret_rotation.select(ctx, "b2_keys"))
    assert names and all(n.startswith("b2_") for n in names)


@pytest.mark.parametrize(("secrets", "rotation", "says"), [
    ("apns", "", r"secrets: apns unknown; use all or a comma list of db_password"),
    (" , ", "", r"name the secrets to rotate"),
    ("db_password", "", r"db_password needs two Neon login roles"),
    ("all,db_password", "", r"db_password needs two Neon login roles"),
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
