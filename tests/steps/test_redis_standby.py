"""The warm standby's decisions without the local cloud: params validation, where the standby
goes (and when it moves or goes), promote-or-restore after a node loss, and the dry run's plan
before any swarm exists (against the Hetzner emulator, through the real hcloud client).
The standby itself running, in sync, promoted: tests/e2e/test_redis.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from hetzner_project import Running, emulator, make_ctx  # noqa: F401 - the fixture
from test_redis_steps import _local

from casera.errors import ParamsError, StepFailed
from casera.params import load_params
from casera.steps.redis_failover import recovery_source
from casera.steps.redis_standby import decide, ensure_redis_standby

NAMES = ["casera-1", "casera-2", "casera-3"]


def test_params_standby_is_off_by_default_and_a_strict_bool(tmp_path: Path) -> None:
    assert load_params("local").redis.standby is False
    assert load_params("local", overrides={"redis.standby": True}).redis.standby is True

    def word(raw: dict) -> None:
        raw["redis"]["standby"] = "yes please"

    with pytest.raises(ParamsError, match="redis.standby"):
        load_params("local", path=_local(tmp_path, word))

    def one_server(raw: dict) -> None:
        raw["redis"]["standby"] = True
        raw["hetzner"]["server_count"] = 1
        raw["swarm"]["redis_node"] = 1

    with pytest.raises(ParamsError, match="redis.standby is true but hetzner.server_count is 1"):
        load_params("local", path=_local(tmp_path, one_server))


@pytest.mark.parametrize(("want", "current", "redis_on", "ready", "expect"), [
    # wanted, none yet: the first ready node that is not Redis'
    (True, None, "casera-1", NAMES, (False, "casera-2")),
    (True, None, "casera-2", NAMES, (False, "casera-1")),
    # wanted, in place: nothing
    (True, "casera-3", "casera-1", NAMES, (False, None)),
    # wanted, on Redis' own node (after a move onto it) or on a node that is down: replaced
    (True, "casera-2", "casera-2", NAMES, (True, "casera-1")),
    (True, "casera-2", "casera-1", ["casera-1", "casera-3"], (True, "casera-3")),
    # not wanted: removed when there, nothing otherwise
    (False, "casera-2", "casera-1", NAMES, (True, None)),
    (False, None, "casera-1", NAMES, (False, None)),
])
def test_where_the_standby_goes(want, current, redis_on, ready, expect) -> None:
    found = decide(want, current, redis_on, ready, NAMES)
    assert (found.remove, found.create_on) == expect, found.reason


def test_no_node_for_the_standby_is_an_error_naming_why() -> None:
    with pytest.raises(StepFailed, match=r"no ready node other than Redis' \(casera-1\)"):
        decide(True, None, "casera-1", ["casera-1"], NAMES)


@pytest.mark.parametrize(("standby_on", "lost", "ready", "target", "source"), [
    ("casera-2", "casera-1", ["casera-2", "casera-3"], "", "standby"),
    ("casera-2", "casera-1", ["casera-2", "casera-3"], "casera-2", "standby"),
    # the operator named another target: B2 there
    ("casera-2", "casera-1", ["casera-2", "casera-3"], "casera-3", "b2"),
    # no standby, the standby on the lost node, or on a node that is not ready
    (None, "casera-1", ["casera-2", "casera-3"], "", "b2"),
    ("casera-1", "casera-1", ["casera-2", "casera-3"], "", "b2"),
    ("casera-2", "casera-1", ["casera-3"], "", "b2"),
])
def test_promote_the_standby_or_restore_from_b2(standby_on, lost, ready, target,
                                                source) -> None:
    assert recovery_source(standby_on, lost, ready, target) == source


def test_dry_run_before_the_swarm_plans_the_standby_only_when_wanted(
        tmp_path: Path, emulator: Running) -> None:  # noqa: F811
    wanted = ensure_redis_standby(make_ctx(tmp_path, emulator, dry_run=True,
                                           **{"redis.standby": True}))
    assert wanted.changed == 1 and wanted.diff[0].startswith("+ service casera-redis-standby")
    off = ensure_redis_standby(make_ctx(tmp_path, emulator, dry_run=True))
    assert off.changed == 0 and off.diff == []
    # A real run with no swarm stops, naming what to run first.
    with pytest.raises(StepFailed, match="run the bootstrap's swarm and stack steps first"):
        ensure_redis_standby(make_ctx(tmp_path, emulator, **{"redis.standby": True}))
