"""Stand-in for Casera's Asynq workers: takes tasks from Redis in Asynq's key layout, marks the
Postgres row (if the task has one) processed, completes the task. Several replicas share the
queues; the Lua dequeue hands each task to exactly one of them.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from . import asynq
from .common import error_text, exit_on_sigterm, log, pg_connect, redis_client

HEARTBEAT = Path(os.environ.get("CASERA_HEARTBEAT_FILE", "/tmp/worker-heartbeat"))


def process(task_id: str, msg: dict[str, Any]) -> dict[str, Any]:
    """Do the task's work; returns what it did, for the log."""
    item_id = (msg.get("payload") or {}).get("item_id")
    if item_id is None:
        return {"task_id": task_id, "type": msg.get("type"), "item": None}
    with pg_connect() as conn:
        # Every processing counts (a duplicate shows as 2); the first one marks the row.
        counted = conn.execute(
            "UPDATE items SET process_count = process_count + 1, "
            "processed_at = coalesce(processed_at, now()), "
            "processed_by = coalesce(processed_by, %s) WHERE id = %s "
            "RETURNING process_count",
            (socket.gethostname(), item_id),
        ).fetchone()
        conn.commit()
    return {"task_id": task_id, "type": msg.get("type"), "item": item_id,
            "rows_marked": 1 if counted and counted[0] == 1 else 0,
            "process_count": counted[0] if counted else None}


def run_once(r: Any, queues: list[str], lease_seconds: int, retention_seconds: int) -> bool:
    """Handle at most one task from the first queue that has one. True when it handled one."""
    for queue in queues:
        task = asynq.dequeue(r, queue, lease_seconds)
        if task is None:
            continue
        task_id, msg = task
        try:
            done = process(task_id, msg)
        except Exception as exc:  # noqa: BLE001
            # Left active with its lease: the recoverer re-queues it when the lease runs out,
            # which is how Asynq retries after a crash too.
            log("task_failed", queue=queue, task_id=task_id, error=error_text(exc))
            return True
        asynq.complete(r, task_id, queue, retention_seconds)
        log("task_done", queue=queue, **done)
        return True
    return False


def main() -> None:
    exit_on_sigterm()
    queues = [q.strip() for q in os.environ.get("CASERA_QUEUES", "default").split(",")
              if q.strip()]
    lease = int(os.environ.get("CASERA_LEASE_SECONDS", "30"))
    retention = int(os.environ.get("CASERA_RETENTION_SECONDS", "3600"))
    idle_sleep = float(os.environ.get("CASERA_POLL_SECONDS", "0.5"))
    log("starting", queues=queues, lease_seconds=lease, host=socket.gethostname())
    r = redis_client()
    last_recover = 0.0
    try:
        while True:
            try:
                if time.monotonic() - last_recover > 5:
                    for queue in queues:
                        recovered = asynq.recover_expired(r, queue)
                        if recovered:
                            log("leases_expired", queue=queue, requeued=recovered)
                    last_recover = time.monotonic()
                busy = run_once(r, queues, lease, retention)
                HEARTBEAT.touch()
            except Exception as exc:  # noqa: BLE001 - Redis away: say so, keep trying
                log("redis_unavailable", error=error_text(exc))
                busy = False
                time.sleep(2)
            if not busy:
                time.sleep(idle_sleep)
    except (KeyboardInterrupt, SystemExit):
        log("stopping")


if __name__ == "__main__":
    main()
