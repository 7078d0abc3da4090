"""Redis runbooks' building blocks without the local cloud: the Asynq integrity rules on
hand-made key sets, the provider against a real ``redis-server`` on this machine (Asynq keys as
the stand-in apps write them, a snapshot restored into a scratch server), the backups bucket's
lifecycle rule and the params that tie the backup job to its key."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from casera.errors import ParamsError
from casera.params import BucketParams, load_params
from casera.paths import project_dir
from casera.providers import redis_db
from casera.steps.redis_checks import asynq_findings
from casera.steps.storage import lifecycle_rules


def queue(name: str = "default", **kw: list[str]) -> redis_db.AsynqQueue:
    q = redis_db.AsynqQueue(name)
    q.lists = {s: kw.get(s, []) for s in redis_db.ID_LISTS}
    q.zsets = {s: kw.get(s, []) for s in redis_db.ID_ZSETS}
    return q


def failing(keys: redis_db.AsynqKeys) -> list[str]:
    return [name for name, ok, _ in asynq_findings(keys) if not ok]


def test_consistent_queues_are_green() -> None:
    q = queue(pending=["a", "b"], active=["c"], lease=["c"], completed=["d"])
    q.states = {"a": "pending", "b": "pending", "c": "active"}
    assert failing(redis_db.AsynqKeys({"default"}, {"default": q})) == []


@pytest.mark.parametrize(("change", "red"), [
    (lambda q, keys: q.states.update(a=None), "queue default task hashes"),
    (lambda q, keys: q.states.update(c="pending"), "queue default task hashes"),
    (lambda q, keys: q.zsets.update(lease=[]), "queue default leases"),
    (lambda q, keys: q.zsets.update(retry=["a"]), "queue default one state per id"),
    (lambda q, keys: keys.registered.clear(), "queue default registered"),
])
def test_each_rule_can_be_red(change, red: str) -> None:
    q = queue(pending=["a"], active=["c"], lease=["c"])
    q.states = {"a": "pending", "c": "active"}
    keys = redis_db.AsynqKeys({"default"}, {"default": q})
    change(q, keys)
    assert failing(keys) == [red]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[redis_db.Client]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (Debian package redis-server, make install)")
    port = redis_db._free_port()
    process = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--dir",
                                str(tmp_path), "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL)
    client = redis_db.connect("127.0.0.1", port)
    deadline = time.monotonic() + 20
    while not redis_db.ping(client):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.1)
    yield client
    process.terminate()
    process.wait(10)


def test_stand_in_asynq_keys_read_back_consistent(redis_server, tmp_path: Path) -> None:
    """The stand-in apps' own Asynq code (enqueue, dequeue, complete) writes the keys; the
    provider reads them; the rules find nothing wrong; a snapshot of it restores into a
    scratch server with the same key count and the same findings."""
    from casera_localcloud.images.apps import asynq  # shipped in the images as standin/
    for n in range(5):
        asynq.enqueue(redis_server, "item:process", {"item_id": n})
    task_id, _ = asynq.dequeue(redis_server)
    asynq.complete(redis_server, task_id)
    asynq.dequeue(redis_server)  # one left active, with its lease
    keys = redis_db.asynq_keys(redis_server)
    q = keys.queues["default"]
    assert (len(q.lists["pending"]), len(q.lists["active"]), len(q.zsets["lease"])) == (3, 1, 1)
    assert failing(keys) == []

    redis_server.save()
    with redis_db.scratch_server(tmp_path / "dump.rdb", tmp_path / "scratch") as scratch:
        assert redis_db.facts(scratch).dbsize == redis_db.facts(redis_server).dbsize > 0
        assert failing(redis_db.asynq_keys(scratch)) == []


def test_scratch_server_refuses_a_damaged_snapshot(tmp_path: Path) -> None:
    bad = tmp_path / "bad.rdb"
    bad.write_bytes(b"REDIS0010 this is not an RDB")
    with pytest.raises(Exception, match="scratch redis-server exited"):
        with redis_db.scratch_server(bad, tmp_path / "scratch", timeout=20):
            pass


def test_lifecycle_rule_keeps_files_the_days_params_say() -> None:
    assert lifecycle_rules(BucketParams(name="casera-uploads")) == []
    assert lifecycle_rules(BucketParams(name="casera-backups", keep_days=7)) == [
        {"daysFromHidingToDeleting": 1, "daysFromUploadingToHiding": 7, "fileNamePrefix": ""}]


def _local(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load((project_dir() / "params" / "local.yaml").read_text())
    edit(raw)
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_backup_job_needs_its_bucket_and_a_prefixed_key(tmp_path: Path) -> None:
    def no_bucket(raw: dict) -> None:
        del raw["b2"]["buckets"]["backups"]
        raw["b2"]["keys"] = [k for k in raw["b2"]["keys"] if k["bucket"] != "backups"]

    def no_prefix(raw: dict) -> None:
        for key in raw["b2"]["keys"]:
            key.pop("name_prefix", None)

    with pytest.raises(ParamsError, match="b2.buckets has no such bucket"):
        load_params("local", path=_local(tmp_path, no_bucket))
    with pytest.raises(ParamsError, match="no b2.keys entry for the backup service"):
        load_params("local", path=_local(tmp_path, no_prefix))
    shipped = load_params("local")
    key = next(k for k in shipped.b2.keys if k.bucket == "backups")
    assert "deleteFiles" not in key.capabilities and "readFiles" not in key.capabilities
    assert key.name_prefix == shipped.redis.backup.prefix


def _server(tmp_path: Path, name: str, *args: str) -> tuple[subprocess.Popen, redis_db.Client,
                                                             int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (Debian package redis-server, make install)")
    port = redis_db._free_port()
    workdir = tmp_path / name
    workdir.mkdir()
    process = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--dir",
                                str(workdir), "--save", "", "--appendonly", "no", *args],
                               stdout=subprocess.DEVNULL)
    client = redis_db.connect("127.0.0.1", port)
    deadline = time.monotonic() + 20
    while not redis_db.ping(client):
        assert time.monotonic() < deadline, f"redis-server {name} did not start"
        time.sleep(0.1)
    return process, client, port


def test_the_write_pause_freezes_the_offset_only_with_the_ping_period_raised(
        tmp_path: Path) -> None:
    """CLIENT PAUSE WRITE alone lets the master's replication PING move its offset
    (docs/facts.md); pause_writes raises the period so it stays put, and resume_writes puts
    the period back. Real redis-servers, the PING every second to keep the test short."""
    from casera.steps.redis_failover import PING_PERIOD, pause_writes, resume_writes

    started = []
    try:
        master_p, master, port = _server(tmp_path, "master", "--repl-ping-replica-period", "1")
        started.append(master_p)
        replica_p, replica, _ = _server(tmp_path, "replica", "--replicaof", "127.0.0.1",
                                        str(port))
        started.append(replica_p)
        deadline = time.monotonic() + 20
        while replica.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.1)

        def offset() -> int:
            return int(master.info("replication")["master_repl_offset"])

        # The pause alone: PINGs still move the offset (what made the checks flaky).
        master.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
        before = offset()
        time.sleep(2.5)
        assert offset() > before, "no PING moved the offset: the premise no longer holds"
        master.execute_command("CLIENT", "UNPAUSE")

        period = pause_writes(master)
        assert period == "1"
        before = offset()
        time.sleep(2.5)
        assert offset() == before
        resume_writes(master, period)
        assert redis_db.config_get(master, PING_PERIOD) == "1"
        master.set("after", "the pause")  # writes go again
    finally:
        for process in started:
            process.terminate()
            process.wait(10)
