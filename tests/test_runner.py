"""The runner end to end, through the real ``casera`` command line and a real Jupyter kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from runner_helpers import PLANTED, assert_no_planted_secret, casera, outputs, write_runbook

META_FIELDS = {"run_id", "runbook", "env", "operator", "host", "git_commit", "git_dirty",
               "package_version", "parameters", "start", "end", "duration_s", "status",
               "failed_step", "steps", "changes"}


def meta(path: Path) -> dict:
    return json.loads(path.read_text())["metadata"]["casera"]


def test_preflight_keeps_a_scrubbed_output_with_full_metadata(project: Path) -> None:
    done = casera("run", "preflight", "--env", "local")
    assert done.returncode == 0, done.stderr
    [kept] = outputs(project, "local", "preflight")
    assert kept.name.endswith(".ipynb") and kept.name[:8].isdigit()
    m = meta(kept)
    assert META_FIELDS <= set(m)
    assert m["status"] == "succeeded" and m["env"] == "local" and m["runbook"] == "preflight"
    assert m["operator"] == "test-operator" and m["git_dirty"] is False
    assert len(m["git_commit"]) == 40 and m["failed_step"] is None
    assert [s["step"] for s in m["steps"]] == ["params", "secrets", "versions", "endpoints"]
    assert m["parameters"]["params"]["hetzner"]["server_count"] == 3
    # The secrets were all present (planted) and the output says so by name only.
    secrets_step = next(s for s in m["steps"] if s["step"] == "secrets")
    assert all(check["ok"] for check in secrets_step["checks"])
    assert_no_planted_secret(kept)
    assert not any(value in done.stdout + done.stderr for value in PLANTED.values())


def test_a_printed_secret_is_scrubbed_in_every_form(project: Path) -> None:
    write_runbook(project / "runbooks", "leaky", [(
        "2. Print what must never be printed",
        "import base64, urllib.parse\n"
        "value = ctx.secrets.get('hcloud_token').reveal()\n"
        "print(value)\n"
        "print(urllib.parse.quote(value, safe=''))\n"
        "print(base64.b64encode(value.encode()).decode())\n"
        "value",
    )])
    done = casera("run", "leaky", "--env", "local")
    assert done.returncode == 0, done.stderr
    [kept] = outputs(project, "local", "leaky")
    assert_no_planted_secret(kept)
    text = kept.read_text()
    planted = PLANTED["CASERA_HCLOUD_TOKEN"]
    assert "********" in text and planted not in done.stdout
    import base64
    import urllib.parse
    assert urllib.parse.quote(planted, safe="") not in text
    assert base64.b64encode(planted.encode()).decode().rstrip("=") not in text
    assert "masked" in done.stdout


def test_bad_params_exit_2_naming_file_key_and_fix_and_keep_nothing(project: Path) -> None:
    cases = {
        "services.api.replica=3": ("services.api.replica", "unknown key"),
        "hetzner.server_count=three": ("hetzner.server_count", "expected an integer"),
        "services.api.replicas=9": ("services.api", "outside the plan's range (3 to 6)"),
    }
    for setting, (key, problem) in cases.items():
        done = casera("run", "preflight", "--env", "local", "-p", setting)
        assert done.returncode == 2, (setting, done.stdout, done.stderr)
        assert "params/local.yaml" in done.stderr and key in done.stderr
        assert problem in done.stderr and "Fix:" in done.stderr
    params = project / "params" / "local.yaml"
    params.write_text(params.read_text().replace("  server_count: 3", "  server_count: 3\n"
                                                 "  severs: 3"))
    done = casera("run", "preflight", "--env", "local")
    assert done.returncode == 2 and "hetzner.severs: unknown key" in done.stderr
    assert outputs(project, "local", "preflight") == []


def test_a_secret_written_into_params_is_refused_without_showing_it(project: Path) -> None:
    params = project / "params" / "local.yaml"
    planted = PLANTED["CASERA_NEON_API_KEY"]
    params.write_text(params.read_text().replace("zone: casera.test", f"zone: '{planted}'"))
    done = casera("run", "preflight", "--env", "local")
    assert done.returncode == 2
    assert "cloudflare.zone: holds a secret value (not shown)" in done.stderr
    assert planted not in done.stderr + done.stdout
    assert outputs(project, "local", "preflight") == []


def test_failed_step_is_named_and_exit_is_nonzero(project: Path) -> None:
    write_runbook(project / "runbooks", "boom", [
        ("2. Harmless", "print('fine')"),
        ("3. Explode on purpose", "raise RuntimeError('the disk is on fire')"),
        ("4. Never reached", "print('unreachable')"),
    ])
    done = casera("run", "boom", "--env", "local")
    assert done.returncode == 1
    assert "3. Explode on purpose" in done.stderr and "the disk is on fire" in done.stderr
    [kept] = outputs(project, "local", "boom")
    assert str(kept) in done.stderr
    m = meta(kept)
    assert m["status"] == "failed" and m["failed_step"] == "3. Explode on purpose"


def test_cell_timeout_is_recorded_as_timed_out(project: Path) -> None:
    write_runbook(project / "runbooks", "sleepy", [("2. Wait too long",
                                                    "import time\ntime.sleep(seconds)")],
                  extra_parameters="seconds = 60")
    started = time.monotonic()
    done = casera("run", "sleepy", "--env", "local", "--cell-timeout", "10")
    assert time.monotonic() - started < 55, "the timeout did not stop the cell"
    assert done.returncode == 4, done.stderr
    [kept] = outputs(project, "local", "sleepy")
    m = meta(kept)
    assert m["status"] == "timed-out" and m["failed_step"] == "2. Wait too long"
    assert m["cell_timeout_s"] == 10


def test_second_run_on_the_same_env_is_refused_naming_the_first(project: Path) -> None:
    write_runbook(project / "runbooks", "sleepy", [("2. Hold the lock",
                                                    "import time\ntime.sleep(seconds)")],
                  extra_parameters="seconds = 60")
    first = subprocess.Popen([sys.executable, "-m", "casera.runner.cli", "run", "sleepy",
                              "--env", "local", "-p", "seconds=25"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ))
    try:
        lock = project / "outputs" / "local" / ".lock"
        deadline = time.monotonic() + 30
        while not lock.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        holder = json.loads(lock.read_text())
        second = casera("run", "preflight", "--env", "local")
        assert second.returncode == 3
        assert holder["run_id"] in second.stderr and "test-operator" in second.stderr
        assert holder["since"] in second.stderr and "running" in second.stderr
        # Another environment is not blocked by it.
        assert casera("lock", "--env", "staging").stdout.strip() == "env staging is not locked"
    finally:
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert not lock.exists()


def test_stale_lock_is_reported_and_broken_only_when_asked(project: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lock = project / "outputs" / "local" / ".lock"
    lock.parent.mkdir(parents=True)
    import socket
    lock.write_text(json.dumps({"run_id": "deadbeef", "operator": "ghost",
                                "host": socket.gethostname(), "pid": int(dead.stdout),
                                "since": "2026-01-01T00:00:00+00:00", "runbook": "bootstrap"}))
    refused = casera("run", "preflight", "--env", "local")
    assert refused.returncode == 3
    assert "STALE" in refused.stderr and "--break-lock" in refused.stderr
    done = casera("run", "preflight", "--env", "local", "--break-lock")
    assert done.returncode == 0, done.stderr


def test_gate_refuses_headless_production_like_runs_unless_approved(project: Path) -> None:
    write_runbook(project / "runbooks", "gated", [(
        "2. Delete the old server",
        "from casera.gate import confirm\n"
        "print(confirm(ctx, 'Delete server casera-stg-9', ['- server casera-stg-9']))",
    )])
    refused = casera("run", "gated", "--env", "staging")
    assert refused.returncode == 3, refused.stderr
    [kept] = outputs(project, "staging", "gated")
    m = meta(kept)
    assert m["status"] == "refused" and m["failed_step"] == "2. Delete the old server"
    assert "--approve" in refused.stderr

    approved = casera("run", "gated", "--env", "staging", "--approve")
    assert approved.returncode == 0, approved.stderr
    assert "approved by --approve (operator test-operator)" in approved.stdout

    local = casera("run", "gated", "--env", "local")
    assert local.returncode == 0 and "runner.approval: auto" in local.stdout


def test_runs_lists_the_trail_and_show_renders_html(project: Path) -> None:
    assert casera("run", "preflight", "--env", "local").returncode == 0
    listing = casera("runs", "--env", "local")
    assert listing.returncode == 0
    header, row = listing.stdout.strip().splitlines()
    assert header.split()[:5] == ["time", "env", "runbook", "operator", "status"]
    assert "preflight" in row and "test-operator" in row and "succeeded" in row
    [kept] = outputs(project, "local", "preflight")
    shown = casera("show", meta(kept)["run_id"])
    assert shown.returncode == 0, shown.stderr
    html = Path(shown.stdout.strip()).read_text()
    assert "succeeded" in html and "Preflight" in html
    assert_no_planted_secret(Path(shown.stdout.strip()))


def test_unknown_runbook_and_runner_owned_parameters_are_bad_input(project: Path) -> None:
    missing = casera("run", "nope", "--env", "local")
    assert missing.returncode == 2 and "preflight" in missing.stdout + missing.stderr
    owned = casera("run", "preflight", "--env", "local", "-p", "dry_run=true")
    assert owned.returncode == 2 and "--dry-run" in owned.stderr
