"""The runner end to end, through the real ``casera`` command line and a real Jupyter kernel."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from runner_helpers import (
    PLANTED,
    REPO,
    add_env,
    assert_no_planted_secret,
    casera,
    hcloud,
    make_checkout,
    outputs,
    write_runbook,
)

from casera.result import ChecksFailed, StepResult, timed
from casera.runner.lock import LockHolder, lock_name

META_FIELDS = {"run_id", "runbook", "env", "mode", "operator", "host", "git_commit", "git_dirty",
               "package_version", "parameters", "start", "end", "duration_s", "status",
               "failed_step", "failed_checks", "steps", "changes"}

# A step as the library writes them: one green check, one red, and a note.
RED_STEP = """from casera.result import StepResult, timed
with timed(StepResult("disk", "casera-local-1", dry_run=ctx.dry_run)) as result:
    result.note("mount", "/var/lib/docker")
    result.check("inodes", True, "12% used")
    result.check("free space", False, "2% free, needs 10%")
result"""
GREEN_STEP = """from casera.result import StepResult, timed
with timed(StepResult("disk", "casera-local-1", dry_run=ctx.dry_run)) as result:
    result.check("free space", True, "40% free")
result"""


def meta(path: Path) -> dict:
    return json.loads(path.read_text())["metadata"]["casera"]


def banner(path: Path) -> nbformat.NotebookNode:
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.metadata.get("tags") == ["casera-status"], first
    return first


def lock_labels(url: str, env: str = "local") -> dict[str, str] | None:
    found = hcloud(url).firewalls.get_by_name(lock_name(env))
    return found.labels if found else None


# ------------------------------------------------------------------ results


def test_a_red_check_raises_after_journaling_and_a_note_cannot_fail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = tmp_path / "journal.jsonl"
    monkeypatch.setenv("CASERA_RUN_JOURNAL", str(journal))
    with timed(StepResult("disk", "n1")) as green:
        green.note("mount", "/var/lib/docker")
        green.check("free space", True, "40% free")
    assert green.ok and "[info] mount" in str(green) and "[ ok ] free space" in str(green)
    with pytest.raises(ChecksFailed) as caught:
        with timed(StepResult("disk", "n2")) as red:
            red.note("mount", "/var/lib/docker")
            red.check("free space", False, "2% free")
    assert caught.value.result is red and not red.ok
    assert [c.name for c in red.failed_checks] == ["free space"]
    assert "disk n2: 1 check(s) failed: free space: 2% free" in str(caught.value)
    assert "1 CHECK FAILED" in red.headline()
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [(r["step"], r["target"], r["ok"]) for r in records] == [("disk", "n1", True),
                                                                    ("disk", "n2", False)]
    assert records[1]["checks"][0]["kind"] == "info"


# ------------------------------------------------------------------ runs


def test_preflight_keeps_a_scrubbed_output_with_full_metadata(project: Path) -> None:
    # Nothing but the scratch Hetzner answers here (planted credentials, no servers: "ssh +
    # docker" is a note), so B2 and the other endpoints are red: the run fails, names the checks,
    # and keeps everything else.
    done = casera("run", "preflight", "--env", "local")
    assert done.returncode == 1, done.stderr
    [kept] = outputs(project, "local", "preflight")
    assert kept.name.endswith(".ipynb") and kept.name[:8].isdigit()
    m = meta(kept)
    assert META_FIELDS <= set(m)
    assert m["status"] == "failed" and m["env"] == "local" and m["runbook"] == "preflight"
    assert m["mode"] == "headless"
    assert m["operator"] == "test-operator" and m["git_dirty"] is False
    assert len(m["git_commit"]) == 40 and m["failed_step"] == "5. Endpoints"
    assert [s["step"] for s in m["steps"]] == ["params", "secrets", "versions", "endpoints"]
    assert m["parameters"]["params"]["hetzner"]["server_count"] == 3
    red = {(c["step"], c["check"]) for c in m["failed_checks"]}
    assert ("endpoints", "b2") in red and ("endpoints", "hetzner api") not in red
    assert ("endpoints", "ssh + docker") not in red
    assert "failed check: endpoints env local: b2" in done.stderr
    # The secrets were all present (planted) and the output says so by name only.
    secrets_step = next(s for s in m["steps"] if s["step"] == "secrets")
    assert all(check["ok"] for check in secrets_step["checks"])
    assert "FAILED" in banner(kept).source and "endpoints" in banner(kept).source
    assert_no_planted_secret(kept)
    assert not any(value in done.stdout + done.stderr for value in PLANTED.values())


def test_a_red_check_fails_the_run_naming_the_step_and_the_check(project: Path) -> None:
    write_runbook(project / "runbooks", "reddisk", [
        ("2. Disk", RED_STEP),
        ("3. Never reached", "print('unreachable')"),
    ])
    done = casera("run", "reddisk", "--env", "local")
    assert done.returncode == 1, done.stderr
    assert "reddisk on local: failed" in done.stderr
    assert "failed step: 2. Disk" in done.stderr
    assert "failed check: disk casera-local-1: free space: 2% free, needs 10%" in done.stderr
    assert "unreachable" not in done.stdout
    [kept] = outputs(project, "local", "reddisk")
    m = meta(kept)
    assert m["status"] == "failed" and m["failed_step"] == "2. Disk"
    assert m["failed_checks"] == [{"step": "disk", "target": "casera-local-1",
                                   "check": "free space", "detail": "2% free, needs 10%"}]
    cells = nbformat.read(kept, as_version=4).cells
    assert "ChecksFailed" in json.dumps(cells[m["failed_cell"]].outputs)
    top = banner(kept).source
    assert "FAILED" in top and "#cf222e" in top and "free space" in top and "2. Disk" in top


def test_a_caught_red_step_still_fails_the_run(project: Path) -> None:
    write_runbook(project / "runbooks", "swallowed", [(
        "2. Disk, its failure swallowed",
        "from casera.result import ChecksFailed, StepResult, timed\ntry:\n" + "\n".join(
            "    " + line for line in RED_STEP.splitlines()[1:-1]) +
        "\nexcept ChecksFailed:\n    print('ignored')",
    )])
    done = casera("run", "swallowed", "--env", "local")
    assert done.returncode == 1, done.stderr
    assert "failed check: disk casera-local-1: free space" in done.stderr
    [kept] = outputs(project, "local", "swallowed")
    assert meta(kept)["status"] == "failed" and meta(kept)["failed_step"] == "disk"


def test_banner_is_green_for_a_run_and_amber_for_a_dry_run(project: Path) -> None:
    write_runbook(project / "runbooks", "greendisk", [("2. Disk", GREEN_STEP)])
    done = casera("run", "greendisk", "--env", "local")
    assert done.returncode == 0, done.stderr
    dry = casera("run", "greendisk", "--env", "local", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    run, dry_run = outputs(project, "local", "greendisk")
    if meta(run)["parameters"]["dry_run"]:
        run, dry_run = dry_run, run
    assert "SUCCEEDED" in banner(run).source and "#1a7f37" in banner(run).source
    assert "DRY RUN" in banner(dry_run).source and "#9a6700" in banner(dry_run).source
    assert meta(run)["failed_checks"] == [] and meta(run)["status"] == "succeeded"


def test_nbval_fails_on_a_red_check(project: Path, tmp_path: Path) -> None:
    """nbval with the runbooks' own plugin (runbooks/conftest.py), told not to start the
    local cloud: these notebooks need none."""
    suite = tmp_path / "nbval"
    suite.mkdir()
    (suite / "conftest.py").write_text((REPO / "runbooks" / "conftest.py").read_text())
    for name, step in (("green", GREEN_STEP), ("red", RED_STEP)):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell("class ctx:\n    dry_run = False"),
                    nbformat.v4.new_code_cell(step)]
        nbformat.write(nb, suite / f"{name}.ipynb")
    env = dict(os.environ, CASERA_NBVAL_NO_LOCAL_CLOUD="1")

    def nbval(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--nbval-lax", f"--rootdir={suite}", str(suite / name)],
                              capture_output=True, text=True, timeout=300, cwd=suite, env=env)

    green = nbval("green.ipynb")
    assert green.returncode == 0, green.stdout + green.stderr
    assert "3 passed" in green.stdout  # the plugin's injected parameters cell, then ours
    red = nbval("red.ipynb")
    assert red.returncode == 1, red.stdout + red.stderr
    assert "ChecksFailed" in red.stdout and "free space: 2% free, needs 10%" in red.stdout
    assert "1 failed, 2 passed" in red.stdout


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
    assert planted.encode().hex() not in text
    assert "masked" in done.stdout


def test_a_secret_the_scrub_cannot_mask_is_never_kept_exit_5(project: Path) -> None:
    # An HTTP basic auth header: base64 of "casera:<token>", the token 7 bytes into the blob,
    # where no encoding of the token alone appears. Masking a piece would corrupt the blob.
    write_runbook(project / "runbooks", "basicauth", [(
        "2. Print an Authorization header",
        "import base64\n"
        "pair = 'casera:' + ctx.secrets.get('hcloud_token').reveal()\n"
        "print('Authorization: Basic ' + base64.b64encode(pair.encode()).decode())",
    )])
    done = casera("run", "basicauth", "--env", "local")
    assert done.returncode == 5, done.stdout + done.stderr
    assert "SECRET LEAK" in done.stderr and "base64 inside a larger blob" in done.stderr
    assert outputs(project, "local", "basicauth") == []
    assert not list((project / "outputs").rglob("*.ipynb"))
    header = base64.b64encode(f"casera:{PLANTED['CASERA_HCLOUD_TOKEN']}".encode()).decode()
    assert header[12:40] not in done.stdout + done.stderr  # the live log withheld the line
    assert "line withheld" in done.stdout


def test_a_secret_made_mid_run_is_masked_in_the_live_log_and_the_output(project: Path) -> None:
    made = "midrun-B2-Secret-9f8e7d6c5b4a"
    write_runbook(project / "runbooks", "newkey", [(
        "2. Make a key and print it",
        "from casera.operator_secrets import Secret\nfrom casera.b2_keys import key_store\n"
        f"value = {made[:6]!r} + {made[6:]!r}\n"
        "key_store(ctx.env).put('casera-local-api-uploads', 'k-001', Secret('k', value))\n"
        "print('made key', value)",
    )])
    done = casera("run", "newkey", "--env", "local")
    assert done.returncode == 0, done.stderr
    assert "made key ********" in done.stdout and made not in done.stdout
    [kept] = outputs(project, "local", "newkey")
    assert made not in kept.read_text()


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


def test_a_second_checkout_is_refused_naming_the_holder(project: Path, hetzner_url: str,
                                                        tmp_path: Path) -> None:
    """CI's checkout and an operator's laptop: two project dirs, one Hetzner project."""
    write_runbook(project / "runbooks", "sleepy", [("2. Hold the lock",
                                                    "import time\ntime.sleep(seconds)")],
                  extra_parameters="seconds = 60")
    laptop = make_checkout(tmp_path / "laptop", hetzner_url)
    add_env(laptop, "other")
    first = subprocess.Popen([sys.executable, "-m", "casera.runner.cli", "run", "sleepy",
                              "--env", "local", "-p", "seconds=20"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, CASERA_OPERATOR="ci-runner"))
    try:
        deadline = time.monotonic() + 30
        while (labels := lock_labels(hetzner_url)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert labels is not None, "the first run never took the lock"
        holder = LockHolder.from_labels(labels)
        assert holder.operator == "ci-runner" and holder.runbook == "sleepy"
        on_laptop = dict(os.environ, CASERA_PROJECT_DIR=str(laptop), CASERA_OPERATOR="ana")
        second = casera("run", "preflight", "--env", "local", env=on_laptop)
        assert second.returncode == 3, second.stderr
        assert f"run {holder.run_id} (sleepy) by ci-runner" in second.stderr
        assert holder.since in second.stderr and "[running]" in second.stderr
        assert outputs(laptop, "local", "preflight") == []
        shown = casera("lock", "--env", "local", env=on_laptop)
        assert shown.returncode == 0 and holder.run_id in shown.stdout
        # Another environment in the same Hetzner project is not blocked by it.
        assert casera("lock", "--env", "other", env=on_laptop).stdout.strip() == \
            "env other is not locked"
    finally:
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert lock_labels(hetzner_url) is None


def _plant_lock(url: str, host: str, pid: int) -> None:
    holder = LockHolder(run_id="deadbeef", operator="ghost", host=host, pid=pid,
                        since="20260101T000000Z", runbook="bootstrap")
    hcloud(url).firewalls.create(name=lock_name("local"), labels=holder.labels())


def test_stale_lock_is_reported_and_broken_only_when_asked(project: Path,
                                                          hetzner_url: str) -> None:
    write_runbook(project / "runbooks", "greendisk", [("2. Disk", GREEN_STEP)])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    _plant_lock(hetzner_url, socket.gethostname(), int(dead.stdout))
    refused = casera("run", "greendisk", "--env", "local")
    assert refused.returncode == 3
    assert "run deadbeef (bootstrap) by ghost" in refused.stderr
    assert "STALE" in refused.stderr and "--break-lock" in refused.stderr
    assert "since 20260101T000000Z (" in refused.stderr and "h " in refused.stderr  # its age
    done = casera("run", "greendisk", "--env", "local", "--break-lock")
    assert done.returncode == 0, done.stderr
    assert lock_labels(hetzner_url) is None

    # A holder on another host cannot be checked from here: refused, and broken only when asked.
    _plant_lock(hetzner_url, "ci-runner-7", 4242)
    refused = casera("run", "greendisk", "--env", "local")
    assert refused.returncode == 3 and "on ci-runner-7" in refused.stderr
    assert "on another host" in refused.stderr and "--break-lock" in refused.stderr
    assert casera("run", "greendisk", "--env", "local", "--break-lock").returncode == 0


def test_a_live_holder_on_this_host_is_not_broken_even_when_asked(project: Path,
                                                                  hetzner_url: str) -> None:
    _plant_lock(hetzner_url, socket.gethostname(), os.getpid())
    refused = casera("run", "preflight", "--env", "local", "--break-lock")
    assert refused.returncode == 3 and "[running]" in refused.stderr
    assert "does not break it" in refused.stderr
    assert LockHolder.from_labels(lock_labels(hetzner_url) or {}).run_id == "deadbeef"


@pytest.mark.parametrize("killed", [False, True], ids=["shut down", "killed like nbval does"])
def test_a_jupyter_session_takes_the_lock_scrubs_and_releases_at_exit(
        project: Path, hetzner_url: str, killed: bool) -> None:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(project / "runbooks"))
    try:
        def run(code: str) -> str:
            reply = kc.execute_interactive(code, timeout=120, output_hook=collect)
            assert reply["content"]["status"] == "ok", reply["content"]
            return "".join(texts)

        texts: list[str] = []

        def collect(msg: dict) -> None:
            content = msg["content"]
            texts.append(content.get("text", "") + json.dumps(content.get("data", {})))

        run("from casera.context import start_run\nctx = start_run('local')\n"
            "print(ctx.run_id, ctx.journal)")
        holder = LockHolder.from_labels(lock_labels(hetzner_url) or {})
        assert holder.run_id in "".join(texts) and holder.pid != os.getpid()
        refused = casera("run", "preflight", "--env", "local")
        assert refused.returncode == 3 and f"run {holder.run_id}" in refused.stderr
        # Running the first cell again keeps the same run and lock.
        texts.clear()
        run("ctx = start_run('local')\nprint(ctx.run_id)")
        assert holder.run_id in "".join(texts)
        # The session's output is scrubbed, and its steps are journaled.
        texts.clear()
        out = run("print(ctx.secrets.get('db_password').reveal())\n"
                  "ctx.secrets.get('db_password').reveal()")
        assert PLANTED["CASERA_DB_PASSWORD"] not in out and "********" in out
        run("from casera.result import StepResult, timed\n"
            "with timed(StepResult('disk', 'n1')) as r:\n    r.check('free', True, 'ok')\n"
            "from casera.steps.summary import run_changes\nprint(run_changes())")
        assert "[ ok ] disk n1" in "".join(texts)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=killed)  # now=True: SIGKILL, no atexit (nbval's stop())
    deadline = time.monotonic() + 15
    while lock_labels(hetzner_url) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lock_labels(hetzner_url) is None, "the kernel's end did not release the lock"


def test_gate_refuses_headless_production_like_runs_unless_approved(project: Path) -> None:
    write_runbook(project / "runbooks", "gated", [(
        "2. Delete the old server",
        "from casera.gate import confirm\n"
        "print(confirm(ctx, 'Delete server casera-stg-9', ['- server casera-stg-9']))",
    )])
    # Approval as staging and production require it; env local, whose Hetzner is the scratch
    # one (staging's is the real API).
    required = ("-p", "runner.approval=required")
    refused = casera("run", "gated", "--env", "local", *required)
    assert refused.returncode == 3, refused.stderr
    [kept] = outputs(project, "local", "gated")
    m = meta(kept)
    assert m["status"] == "refused" and m["failed_step"] == "2. Delete the old server"
    assert "--approve" in refused.stderr and "REFUSED" in banner(kept).source

    approved = casera("run", "gated", "--env", "local", *required, "--approve")
    assert approved.returncode == 0, approved.stderr
    assert "approved by --approve (operator test-operator)" in approved.stdout

    local = casera("run", "gated", "--env", "local")
    assert local.returncode == 0 and "runner.approval: auto" in local.stdout


def test_runs_lists_the_trail_and_show_renders_html(project: Path) -> None:
    assert casera("run", "preflight", "--env", "local").returncode == 1  # endpoints are red
    listing = casera("runs", "--env", "local")
    assert listing.returncode == 0
    header, row = listing.stdout.strip().splitlines()
    assert header.split()[:5] == ["time", "env", "runbook", "operator", "status"]
    assert "preflight" in row and "test-operator" in row and "failed" in row
    [kept] = outputs(project, "local", "preflight")
    shown = casera("show", meta(kept)["run_id"])
    assert shown.returncode == 0, shown.stderr
    html = Path(shown.stdout.strip()).read_text()
    assert "failed" in html and "Preflight" in html and "b2" in html
    assert_no_planted_secret(Path(shown.stdout.strip()))


def test_unknown_runbook_and_runner_owned_parameters_are_bad_input(project: Path) -> None:
    missing = casera("run", "nope", "--env", "local")
    assert missing.returncode == 2 and "preflight" in missing.stdout + missing.stderr
    owned = casera("run", "preflight", "--env", "local", "-p", "dry_run=true")
    assert owned.returncode == 2 and "--dry-run" in owned.stderr


def test_a_time_given_to_a_runbook_parameter_stays_the_text_written(tmp_path: Path) -> None:
    # YAML would make it a datetime, which papermill cannot keep in the notebook's JSON.
    import nbformat

    from casera.runner.run import _split_settings

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        'restore_to = ""\ncount = 1', metadata={"tags": ["parameters"]})],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}})
    path = tmp_path / "dr.ipynb"
    nbformat.write(nb, path)
    notebook, overrides = _split_settings(path, [
        "restore_to=2026-12-02T10:15:00.123456+00:00", "count=3",
        "redis.backup.interval_min=5"])
    assert notebook == {"restore_to": "2026-12-02T10:15:00.123456+00:00", "count": 3}
    assert overrides == {"redis.backup.interval_min": 5}
