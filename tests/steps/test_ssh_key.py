"""The operator's SSH key step against the Hetzner emulator: a dry run plans only, the first
run creates, the second changes nothing, and a project key of the same name with another
public key is red."""

from __future__ import annotations

from pathlib import Path

import pytest
from hetzner_project import Running, emulator, make_ctx  # noqa: F401 - the fixture

from casera.errors import StepFailed
from casera.result import ChecksFailed
from casera.steps import ssh_key


def test_dry_run_plans_then_first_run_creates_then_nothing(tmp_path: Path,
                                                          emulator: Running) -> None:  # noqa: F811
    plan = ssh_key.ensure_ssh_key(make_ctx(tmp_path, emulator, dry_run=True))
    assert plan.changed == 1 and plan.diff == ["+ ssh key casera-local-operator"]
    assert emulator.client().ssh_keys.get_all() == []

    ctx = make_ctx(tmp_path, emulator)
    first = ssh_key.ensure_ssh_key(ctx)
    assert first.changed == 1 and first.ok
    assert [c.name for c in first.checks] == ["key present"]
    (made,) = emulator.client().ssh_keys.get_all()
    assert made.name == ctx.params.hetzner.ssh_key_name
    again = ssh_key.ensure_ssh_key(ctx)
    assert again.changed == 0 and again.reason == "exists with this key" and again.ok


def test_a_project_key_with_another_public_key_is_red(tmp_path: Path,
                                                      emulator: Running) -> None:  # noqa: F811
    ssh_key.ensure_ssh_key(make_ctx(tmp_path, emulator))
    other = make_ctx(tmp_path, emulator, key_name="another_ed25519")
    with pytest.raises(ChecksFailed, match="differs from"):
        ssh_key.ensure_ssh_key(other)
    assert len(emulator.client().ssh_keys.get_all()) == 1


def test_a_missing_operator_key_file_names_the_key_and_the_fix(tmp_path: Path,
                                                               emulator: Running) -> None:  # noqa: F811
    ctx = make_ctx(tmp_path, emulator)
    Path(ctx.params.hetzner.ssh_public_key_file).unlink()
    with pytest.raises(StepFailed, match="hetzner.ssh_public_key_file: .* does not exist"):
        ssh_key.ensure_ssh_key(ctx)
    assert emulator.client().ssh_keys.get_all() == []
