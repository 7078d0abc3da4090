"""The backup drill on the bootstrapped local cloud (issue 12): the backup service's pg_dump
taken now, then the runbook restores the newest dump and Redis snapshot into scratch servers
and passes with row counts equal to live's and each backup's age shown; then a dump object
replaced by other bytes under the old checksum (bit rot, or someone with a write key) is the
newest, and the drill fails red naming it. The replacement is removed afterwards, so the next
module finds the cloud as it was.

Cheap on purpose: two runs of a read-only runbook on the cloud test_bootstrap.py made; no
bootstrap, no roll."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from e2e_harness import casera, hcloud

from casera.context import RunContext
from casera.operator_secrets import SecretStore
from casera.params import load_params
from casera.paths import outputs_dir
from casera.providers import b2
from casera.steps import backup_drill, storage
from casera.steps.api_endpoint import api_endpoint_for

pytestmark = [pytest.mark.localcloud]
RUNBOOK = "backup-drill"
ITEMS = 3  # rows written through the api before the dump, so the dump has a table to count


def local_ctx() -> RunContext:
    secrets = SecretStore("local")
    return RunContext(env="local", params=load_params("local", secrets=secrets),
                      secrets=secrets, interactive=False, run_id="e2e-backup-drill",
                      operator="e2e")


def latest() -> dict[str, Any]:
    path = sorted((outputs_dir("local") / RUNBOOK).glob("*.ipynb"))[-1]
    return json.loads(path.read_text())["metadata"]["casera"]


def step(meta: dict[str, Any], name: str) -> dict[str, Any]:
    found = [s for s in meta["steps"] if s["step"] == name]
    assert found, f"no step {name!r}: {[s['step'] for s in meta['steps']]}"
    return found[-1]


def checks(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in record["checks"]}


def test_the_drill_restores_both_backups_and_a_replaced_dump_fails_it_red(record_property):
    ctx = local_ctx()
    endpoint = api_endpoint_for(ctx.params, hcloud().load_balancers.get_by_name(
        ctx.params.load_balancer.name).public_net.ipv4.ip)
    session = endpoint.requests_session()
    for n in range(ITEMS):
        made = session.post(endpoint.url("/items"), json={"name": f"e2e-drill-{n}"}, timeout=10)
        assert made.status_code == 201, made.text
    before = backup_drill.dumps(ctx)
    started = time.monotonic()
    done = casera("run", RUNBOOK, "--env", "local", "-p", "dump_now=true")
    passed_s = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:]
    meta = latest()
    assert meta["status"] == "succeeded" and not meta["failed_checks"], meta["failed_checks"]
    made = step(meta, "pg_dump now")
    assert made["changed"] == 1 and made["ok"], made
    after = backup_drill.dumps(ctx)
    assert len(after) == len(before) + 1 and after[-1].name not in {d.name for d in before}

    dump = step(meta, "pg_dump restore drill")
    found = checks(dump)
    assert all(found[n]["ok"] for n in ("a dump exists", "age", f"sha256 of {after[-1].name}",
                                        "restored whole")), found
    assert after[-1].name in dump["target"] and "old" in dump["reason"]
    # Nothing wrote between the dump and the drill: every table has live's row count.
    counts = found["row counts"]["detail"]
    tables, of = counts.split(" tables")[0].split(" of ")
    assert int(tables) == int(of) > 0, counts
    items = found["table items"]["detail"]
    assert items.endswith(" live") and int(items.split()[0]) >= ITEMS, items
    redis = checks(step(meta, "redis snapshot restore drill"))
    assert redis["age"]["ok"] and "ago" in redis["age"]["detail"], redis["age"]
    assert "live on" in redis["key count"]["detail"], redis["key count"]

    # The newest dump replaced: other bytes under a newer name, with the real dump's info
    # (its sha256) copied over, as a tampered or rotted object would look in a listing.
    api = storage.master_api(ctx)
    bucket = b2.get_bucket(api, ctx.params.b2.buckets[ctx.params.neon.backup.bucket].name)
    assert bucket is not None
    good = after[-1]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(good.uploaded_ms / 1000 + 1))
    bad_name = f"{ctx.params.neon.backup.prefix}{ctx.params.neon.database}-{stamp}.dump"
    assert bad_name > good.name
    handle = api.BUCKET_CLASS(api, bucket.bucket_id, name=bucket.name)
    bad = handle.upload_bytes(b"PGDMP" + b"\0not the dump\0" * 64, bad_name,
                              file_info=dict(good.info))
    try:
        started = time.monotonic()
        red = casera("run", RUNBOOK, "--env", "local")
        failed_s = time.monotonic() - started
        assert red.returncode == 1, red.stdout[-3000:]
        meta = latest()
        assert meta["status"] == "failed", meta["status"]
        named = [c for c in meta["failed_checks"] if c["check"] == f"sha256 of {bad_name}"]
        assert named and "not the dump that was uploaded" in named[0]["detail"], \
            meta["failed_checks"]
        assert bad_name in red.stdout + red.stderr, "the run's summary does not name the dump"
    finally:
        b2.delete_file_version(api, bad.id_, bad_name)
    assert backup_drill.dumps(ctx)[-1].name == good.name
    record_property("measured", f"backup-drill: passing run {passed_s:.1f} s (dump_now), "
                    f"red run {failed_s:.1f} s")
