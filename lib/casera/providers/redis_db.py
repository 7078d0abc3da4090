"""Redis through redis-py: the facts the runbooks read (key count, replication offset,
persistence), Asynq's keys as plain data, and a scratch ``redis-server`` on this machine to
restore a snapshot into.

The cluster's Redis is reached through a local port that an SSH tunnel forwards
(:mod:`casera.providers.ssh_tunnel`); this module only sees a host and a port. Every redis-py
error leaves as :class:`casera.errors.ProviderError` (system ``redis``). Deciding whether the
Asynq keys are consistent is the steps' job (``casera.steps.redis_checks``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from casera.errors import ProviderError

Client = redis.Redis
ASYNQ_QUEUES = "asynq:queues"
# Asynq's per-queue keys that hold task ids (hibiken/asynq internal/base/base.go).
ID_LISTS = ("pending", "active")
ID_ZSETS = ("scheduled", "retry", "archived", "completed", "lease")


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise ProviderError("redis", f"{what}: {type(exc).__name__}: {exc}"[:400],
                            code=type(exc).__name__) from exc


def connect(host: str, port: int, timeout: float = 10.0, retries: bool = True) -> Client:
    """``retries=False`` for a probe that must see the first refused connection (redis-py
    otherwise retries with backoff, and a vanished server reads as slow, not gone)."""
    extra: dict[str, Any] = {} if retries else {"retry": Retry(NoBackoff(), 0)}
    return redis.Redis(host=host, port=port, socket_timeout=timeout,
                       socket_connect_timeout=timeout, decode_responses=True, **extra)


def shutdown_nosave(client: Client) -> None:
    """Stop the server at once, writing nothing (its data was just saved)."""
    with _mapped("SHUTDOWN NOSAVE"):
        try:
            client.shutdown(nosave=True)
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # the answer to a shutdown is the connection closing; callers check it went


def replication(client: Client) -> dict[str, Any]:
    """INFO replication as redis-py parses it (each ``slaveN`` a dict: ip, port, state,
    offset, lag)."""
    with _mapped("INFO replication"):
        return dict(client.info("replication"))


def config_get(client: Client, name: str) -> str:
    with _mapped(f"CONFIG GET {name}"):
        return str(client.config_get(name)[name])


def config_set(client: Client, name: str, value: str | int) -> None:
    with _mapped(f"CONFIG SET {name}"):
        client.config_set(name, value)


@dataclass(frozen=True)
class RedisFacts:
    dbsize: int
    role: str
    repl_offset: int
    version: str
    aof_enabled: bool
    loading: bool


def facts(client: Client) -> RedisFacts:
    with _mapped("INFO"):
        info = client.info()
        dbsize = int(client.dbsize())
    return RedisFacts(dbsize=dbsize, role=str(info.get("role", "?")),
                      repl_offset=int(info.get("master_repl_offset", 0)),
                      version=str(info.get("redis_version", "?")),
                      aof_enabled=bool(int(info.get("aof_enabled", 0))),
                      loading=bool(int(info.get("loading", 0))))


def ping(client: Client) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass
class AsynqQueue:
    """One queue's id collections and the ``state`` field of every task hash they name."""

    name: str
    lists: dict[str, list[str]] = field(default_factory=dict)
    zsets: dict[str, list[str]] = field(default_factory=dict)
    states: dict[str, str | None] = field(default_factory=dict)  # id -> t:<id> state


@dataclass
class AsynqKeys:
    registered: set[str]  # members of asynq:queues
    queues: dict[str, AsynqQueue]  # every queue that has keys, registered or not


def _queue_of(key: str) -> str | None:
    # asynq:{<queue>}:<suffix>; the braces are a Redis Cluster hash tag.
    if not key.startswith("asynq:{"):
        return None
    end = key.find("}:", 7)
    return key[7:end] if end > 0 else None


def asynq_keys(client: Client) -> AsynqKeys:
    """Asynq's keys as they are now (read with SCAN and one pipeline per queue: not atomic,
    so a busy queue can show a task between two states; callers read twice to tell)."""
    with _mapped("read Asynq keys"):
        registered = set(client.smembers(ASYNQ_QUEUES))
        names = set(registered)
        for key in client.scan_iter(match="asynq:{*", count=1000):
            queue = _queue_of(key)
            if queue is not None:
                names.add(queue)
        queues = {}
        for name in sorted(names):
            q = AsynqQueue(name)
            pipe = client.pipeline(transaction=True)
            for suffix in ID_LISTS:
                pipe.lrange(f"asynq:{{{name}}}:{suffix}", 0, -1)
            for suffix in ID_ZSETS:
                pipe.zrange(f"asynq:{{{name}}}:{suffix}", 0, -1)
            answers = pipe.execute()
            q.lists = dict(zip(ID_LISTS, answers[:len(ID_LISTS)], strict=True))
            q.zsets = dict(zip(ID_ZSETS, answers[len(ID_LISTS):], strict=True))
            ids = sorted({i for ids in q.lists.values() for i in ids})
            pipe = client.pipeline(transaction=False)
            for task_id in ids:
                pipe.hget(f"asynq:{{{name}}}:t:{task_id}", "state")
            q.states = dict(zip(ids, pipe.execute(), strict=True)) if ids else {}
            queues[name] = q
    return AsynqKeys(registered, queues)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def scratch_server(rdb: Path, workdir: Path, timeout: float = 120) -> Iterator[Client]:
    """A throwaway ``redis-server`` on this machine's loopback that loads ``rdb`` (copied
    into ``workdir``) with AOF off, so it starts from the snapshot and not empty; it writes
    nothing back (no saves) and is shut down when the block ends."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ProviderError("redis", "redis-server is not installed on this machine "
                            "(Debian package redis-server; `make install` installs it)")
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rdb, workdir / "dump.rdb")
    port = _free_port()
    log = workdir / "redis.log"
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir),
         "--dbfilename", "dump.rdb", "--appendonly", "no", "--save", "",
         "--logfile", str(log), "--daemonize", "no", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = connect("127.0.0.1", port)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-300:] if log.exists() else ""
                raise ProviderError("redis", f"scratch redis-server exited "
                                    f"{process.returncode} loading {rdb.name}: {tail}")
            try:
                if client.ping() and not int(client.info("persistence").get("loading", 0)):
                    break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise ProviderError("redis", f"scratch redis-server did not load {rdb.name} "
                                    f"within {timeout:.0f} s")
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def queue_depth(client: Client, queue: str) -> int:
    """Tasks of Asynq queue ``queue`` not yet done: its pending and active lists' lengths."""
    with _mapped(f"read queue {queue}'s depth"):
        pipe = client.pipeline(transaction=True)
        for suffix in ID_LISTS:
            pipe.llen(f"asynq:{{{queue}}}:{suffix}")
        return int(sum(pipe.execute()))
