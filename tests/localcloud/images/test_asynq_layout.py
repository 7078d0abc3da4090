"""The stand-ins' Asynq key layout against a real redis-server: the structure the runbooks'
integrity checks read (docs/facts.md#redis-and-asynq: every pending/active id has a t: hash in
that state, every active id is leased, every queue is in asynq:queues)."""

from __future__ import annotations

import threading

from casera_localcloud.images.apps import asynq


def test_enqueue_writes_asynq_layout(r):
    task_id = asynq.enqueue(r, "item:process", {"item_id": 7})
    assert r.lrange("asynq:{default}:pending", 0, -1) == [task_id]
    task = r.hgetall(f"asynq:{{default}}:t:{task_id}")
    assert task["state"] == "pending"
    assert '"item_id": 7' in task["msg"]
    assert "pending_since" in task
    assert r.smembers("asynq:queues") == {"default"}


def test_dequeue_is_fifo_and_leases(r):
    first = asynq.enqueue(r, "t", {})
    second = asynq.enqueue(r, "t", {})
    task_id, msg = asynq.dequeue(r, lease_seconds=30)
    assert task_id == first and msg["id"] == first
    assert r.lrange("asynq:{default}:active", 0, -1) == [first]
    assert r.lrange("asynq:{default}:pending", 0, -1) == [second]
    assert r.zscore("asynq:{default}:lease", first) is not None
    task = r.hgetall(f"asynq:{{default}}:t:{first}")
    assert task["state"] == "active" and "pending_since" not in task


def test_complete_with_retention_and_without(r):
    kept = asynq.enqueue(r, "t", {})
    dropped = asynq.enqueue(r, "t", {})
    asynq.dequeue(r)
    asynq.complete(r, kept, retention_seconds=600)
    assert r.hget(f"asynq:{{default}}:t:{kept}", "state") == "completed"
    assert r.zscore("asynq:{default}:completed", kept) is not None
    assert 0 < r.ttl(f"asynq:{{default}}:t:{kept}") <= 600
    asynq.dequeue(r)
    asynq.complete(r, dropped, retention_seconds=0)
    assert not r.exists(f"asynq:{{default}}:t:{dropped}")
    assert r.llen("asynq:{default}:active") == 0
    assert r.zcard("asynq:{default}:lease") == 0
    assert r.get("asynq:{default}:processed") == "2"


def test_expired_lease_goes_back_to_pending(r):
    task_id = asynq.enqueue(r, "t", {})
    asynq.dequeue(r, lease_seconds=-1)  # a worker that died mid-task
    assert asynq.recover_expired(r) == 1
    assert r.lrange("asynq:{default}:pending", 0, -1) == [task_id]
    assert r.llen("asynq:{default}:active") == 0
    assert r.hget(f"asynq:{{default}}:t:{task_id}", "state") == "pending"


def test_paused_queue_hands_out_nothing(r):
    asynq.enqueue(r, "t", {})
    r.set("asynq:{default}:paused", "1")
    assert asynq.dequeue(r) is None


def test_each_task_goes_to_exactly_one_consumer(r):
    ids = {asynq.enqueue(r, "t", {"n": n}) for n in range(300)}
    taken: list[list[str]] = [[] for _ in range(4)]

    def consume(bucket: list[str]) -> None:
        while (task := asynq.dequeue(r)) is not None:
            bucket.append(task[0])

    threads = [threading.Thread(target=consume, args=(bucket,)) for bucket in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [task_id for bucket in taken for task_id in bucket]
    assert len(everything) == len(set(everything)) == 300
    assert set(everything) == ids
