"""The staging rebuild's CI pieces, without a cloud: the workflow file passes actionlint (with
shellcheck over its run: blocks) and takes every secret from the CI's store; actionlint does
fail a broken workflow; the scripts are shellcheck-clean; staging-rebuild.sh refuses
production and bad usage before running anything; keep-audit-branch.sh appends the notebooks
to the audit branch without touching the checkout, keeping earlier runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from casera.operator_secrets import SECRET_SPECS

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "staging-rebuild.yml"
SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))
ACTIONLINT = Path(sys.executable).parent / "actionlint"


def run(*args: str | Path, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def test_actionlint_passes_the_workflow_with_shellcheck() -> None:
    assert shutil.which("shellcheck"), "shellcheck missing: make install puts it in (DEBS)"
    done = run(ACTIONLINT, WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_fails_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    # A typo in the secrets context and a shell bug in a run: block: both must be caught.
    broken.write_text(WORKFLOW.read_text()
                      .replace("secrets.CASERA_APNS_KEY", "secret.CASERA_APNS_KEY")
                      .replace('install -d -m 700 ~/.ssh', 'install -d -m 700 ~/.ssh\n'
                               '          cd $UNQUOTED_DIR'))
    done = run(ACTIONLINT, broken)
    assert done.returncode == 1, done.stdout
    assert "secret" in done.stdout and "SC2086" in done.stdout, done.stdout


def test_the_workflow_runs_nightly_and_on_demand_with_secrets_from_the_store_only() -> None:
    flow = yaml.safe_load(WORKFLOW.read_text())
    triggers = flow[True]  # YAML 1.1 reads the key `on` as True
    assert "workflow_dispatch" in triggers and triggers["schedule"][0]["cron"]
    job = flow["jobs"]["rebuild"]
    env = job["env"]
    for spec in SECRET_SPECS:
        assert env.get(spec.env_var) == f"${{{{ secrets.{spec.env_var} }}}}", spec.env_var
    assert all(value.startswith("${{ secrets.") for value in env.values()), env
    runs = [step.get("run", "") for step in job["steps"]]
    assert "scripts/staging-rebuild.sh staging" in runs
    uploads = [s for s in job["steps"] if str(s.get("uses", "")).startswith(
        "actions/upload-artifact@")]
    assert uploads and uploads[0]["with"]["path"] == "outputs/staging/"
    assert uploads[0]["if"] == "always()"
    audit = [s for s in job["steps"] if "keep-audit-branch.sh" in s.get("run", "")]
    assert audit and audit[0]["if"] == "always()"
    # Every step's env is from the store too, and no key material is typed into the file.
    for step in job["steps"]:
        for name, value in (step.get("env") or {}).items():
            assert str(value).startswith("${{ secrets.CASERA_"), (step.get("name"), name)
    assert "PRIVATE KEY-----" not in WORKFLOW.read_text()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_shellcheck_clean(script: Path) -> None:
    done = run("shellcheck", script)
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("args", [["production"], [], ["local", "extra"]])
def test_staging_rebuild_refuses_before_running_anything(args: list[str],
                                                         tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    fake = tmp_path / "casera"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    done = run(REPO / "scripts" / "staging-rebuild.sh", *args, CASERA=str(fake))
    assert done.returncode == 2, done.stdout + done.stderr
    assert not marker.exists()
    assert ("never runs on production" if args == ["production"] else "usage") in done.stderr


def test_staging_rebuild_stops_at_the_first_failing_step(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    fake = tmp_path / "casera"
    # bootstrap fails: health and load-test must not run.
    fake.write_text(f'#!/bin/sh\necho "$2" >> {calls}\n[ "$2" != bootstrap ]\n')
    fake.chmod(0o755)
    done = run(REPO / "scripts" / "staging-rebuild.sh", "local", CASERA=str(fake))
    assert done.returncode == 1
    assert calls.read_text().split() == ["teardown", "bootstrap"]
    assert "STOPPED at bootstrap" in done.stderr


def git(cwd: Path, *args: str) -> str:
    done = run("git", *args, cwd=cwd, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_audit_branch_keeps_every_run_and_leaves_the_checkout_alone(tmp_path: Path) -> None:
    remote, work = tmp_path / "remote.git", tmp_path / "work"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    (work / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "keep-audit-branch.sh", work / "scripts")
    (work / ".gitignore").write_text("outputs/\n")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "init")
    git(work, "remote", "add", "origin", str(remote))
    first = work / "outputs" / "local" / "bootstrap" / "run1.ipynb"
    first.parent.mkdir(parents=True)
    first.write_text("{}")
    script = work / "scripts" / "keep-audit-branch.sh"
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    done = run(script, "local", cwd=work, **env)
    assert done.returncode == 0, done.stderr
    # A fresh machine: only its own run is on disk; the branch keeps both.
    first.unlink()
    (first.parent / "run2.ipynb").write_text("{}")
    done = run(script, "local", cwd=work, **env)
    assert done.returncode == 0, done.stderr
    listed = git(tmp_path, "--git-dir", str(remote), "ls-tree", "-r", "--name-only",
                 "audit/local")
    assert listed.split() == ["outputs/local/bootstrap/run1.ipynb",
                              "outputs/local/bootstrap/run2.ipynb"], listed
    assert git(tmp_path, "--git-dir", str(remote), "rev-list", "--count", "audit/local") == "2"
    # The checkout is untouched: still on main, clean index, nothing staged.
    assert git(work, "branch", "--show-current") == "main"
    assert git(work, "status", "--porcelain") == ""
    # Nothing new: no empty commit.
    done = run(script, "local", cwd=work, **env)
    assert "nothing new" in done.stdout
    assert git(tmp_path, "--git-dir", str(remote), "rev-list", "--count", "audit/local") == "2"
