"""Asynq's Redis key layout (hibiken/asynq, internal/base and internal/rdb), done with the same
atomic Lua steps Asynq uses, so the runbooks' integrity checks and drills see real structure.

One difference: Asynq encodes ``msg`` as a protobuf TaskMessage; the stand-ins store JSON with
the same fields (id, type, payload, queue), since nothing here links Asynq's protobuf schema.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

ALL_QUEUES = "asynq:queues"


def key(queue: str, suffix: str) -> str:
    # The {queue} hash tag keeps a queue's keys in one Redis Cluster slot, as in Asynq.
    return f"asynq:{{{queue}}}:{suffix}"


def task_key(queue: str, task_id: str) -> str:
    return key(queue, f"t:{task_id}")


# KEYS: task hash, pending list, all-queues set. ARGV: msg, id, pending_since (ns), queue.
_ENQUEUE = """
if redis.call("EXISTS", KEYS[1]) == 1 then return 0 end
redis.call("HSET", KEYS[1], "msg", ARGV[1], "state", "pending", "pending_since", ARGV[3])
redis.call("LPUSH", KEYS[2], ARGV[2])
redis.call("SADD", KEYS[3], ARGV[4])
return 1
"""

# KEYS: pending, paused, active, lease. ARGV: lease expiry (unix s), task key prefix.
# LMOVE RIGHT->LEFT is Asynq's RPOPLPUSH: oldest pending first, one worker per task.
_DEQUEUE = """
if redis.call("EXISTS", KEYS[2]) == 1 then return nil end
local id = redis.call("LMOVE", KEYS[1], KEYS[3], "RIGHT", "LEFT")
if not id then return nil end
local tkey = ARGV[2] .. id
redis.call("HSET", tkey, "state", "active")
redis.call("HDEL", tkey, "pending_since")
redis.call("ZADD", KEYS[4], ARGV[1], id)
return {id, redis.call("HGET", tkey, "msg")}
"""

# KEYS: active, lease, completed, task key, processed counter.
# ARGV: id, completed_at (unix s), retention (s; 0 deletes the task as Asynq does without it).
_COMPLETE = """
if redis.call("LREM", KEYS[1], 0, ARGV[1]) == 0 then return redis.error_reply("NOT FOUND") end
redis.call("ZREM", KEYS[2], ARGV[1])
redis.call("INCR", KEYS[5])
if tonumber(ARGV[3]) > 0 then
  local expire_at = tonumber(ARGV[2]) + tonumber(ARGV[3])
  redis.call("ZADD", KEYS[3], expire_at, ARGV[1])
  redis.call("HSET", KEYS[4], "state", "completed", "completed_at", ARGV[2])
  redis.call("EXPIREAT", KEYS[4], expire_at)
else
  redis.call("DEL", KEYS[4])
end
return 1
"""

# KEYS: active, lease, pending. ARGV: now (unix s), task key prefix.
# Asynq's recoverer retries tasks whose lease ran out (a worker died mid-task, or Redis was
# restored from a snapshot taken while tasks were active); here they go back to pending.
_RECOVER = """
local ids = redis.call("ZRANGEBYSCORE", KEYS[2], "-inf", ARGV[1])
for _, id in ipairs(ids) do
  redis.call("LREM", KEYS[1], 0, id)
  redis.call("ZREM", KEYS[2], id)
  redis.call("LPUSH", KEYS[3], id)
  redis.call("HSET", ARGV[2] .. id, "state", "pending", "pending_since", ARGV[3])
end
return #ids
"""


def enqueue(r: Any, task_type: str, payload: dict[str, Any], queue: str = "default") -> str:
    task_id = str(uuid.uuid4())
    msg = json.dumps({"id": task_id, "type": task_type, "payload": payload, "queue": queue})
    r.eval(_ENQUEUE, 3, task_key(queue, task_id), key(queue, "pending"), ALL_QUEUES,
           msg, task_id, str(time.time_ns()), queue)
    return task_id


def dequeue(r: Any, queue: str = "default",
            lease_seconds: int = 30) -> tuple[str, dict[str, Any]] | None:
    answer = r.eval(_DEQUEUE, 4, key(queue, "pending"), key(queue, "paused"),
                    key(queue, "active"), key(queue, "lease"),
                    int(time.time()) + lease_seconds, key(queue, "t:"))
    if not answer:
        return None
    task_id, msg = answer
    return task_id, json.loads(msg)


def complete(r: Any, task_id: str, queue: str = "default", retention_seconds: int = 3600) -> None:
    now = int(time.time())
    r.eval(_COMPLETE, 5, key(queue, "active"), key(queue, "lease"), key(queue, "completed"),
           task_key(queue, task_id), key(queue, "processed"),
           task_id, now, retention_seconds)


def extend_lease(r: Any, task_id: str, queue: str = "default", lease_seconds: int = 30) -> None:
    r.zadd(key(queue, "lease"), {task_id: int(time.time()) + lease_seconds}, xx=True)


def recover_expired(r: Any, queue: str = "default") -> int:
    return int(r.eval(_RECOVER, 3, key(queue, "active"), key(queue, "lease"),
                      key(queue, "pending"), int(time.time()), key(queue, "t:"),
                      str(time.time_ns())))
