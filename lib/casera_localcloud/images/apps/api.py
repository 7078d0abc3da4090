"""Stand-in for Casera's Go API: what the runbooks look at, nothing more.

GET /healthz        alive (Swarm's healthcheck: a database outage must not get every api task
                    killed and restarted, so liveness does not touch Postgres or Redis)
GET /readyz         Postgres through the pooler (TLS) and Redis reachable, one entry per check
GET /secret-sources where each secret came from ("file", "env", "missing"), never values
POST /items         {"name": ...}: a row in Postgres and an Asynq task in Redis, so drills
                    have data to keep or lose
GET /items/<id>     that row, with processed_at once a worker handled it
POST /tokens        {"sub": ...}: a token signed with the current SECRET_KEY (tokens.py: the
                    rotation contract, sign with the current key, accept current and previous)
POST /tokens/verify {"token": ...}: 200 {"valid": true, "signed_with": ...} or 401
POST /digests       {"count": n, "batch": "..."}: n digest tasks enqueued at once (the nightly
                    digest burst of the load test; Casera's real api needs an equivalent, e.g.
                    the scheduler's fan-out, for the load-test runbook to drive it)
"""

from __future__ import annotations

import json
import os
import socket
import threading
from http import HTTPStatus
from typing import Any

from . import asynq, tokens, uploads
from .common import (
    ITEMS_COUNTER_DDL,
    ITEMS_DDL,
    AppHandler,
    drain_seconds,
    draining,
    error_text,
    log,
    pg_connect,
    redis_client,
    retry_dropped,
    secret_sources,
    serve,
)

QUEUE = os.environ.get("CASERA_QUEUE", "default")
# One request enqueues at most this many: a burst of 100k is many requests, each bounded in time.
DIGEST_BATCH_MAX = 5000
_schema_ready = threading.Event()


def check_postgres() -> dict[str, Any]:
    def check() -> dict[str, Any]:
        with pg_connect() as conn:
            row = conn.execute("SELECT current_setting('server_version'), "
                               "coalesce(inet_server_addr()::text, 'socket')").fetchone()
            # ssl_in_use is psycopg's view of the client side of this very connection.
            return {"ok": True, "server_version": row[0], "tls": bool(conn.pgconn.ssl_in_use)}

    try:
        return dict(retry_dropped(check, "readiness"))
    except Exception as exc:  # noqa: BLE001 - the readiness answer reports any failure
        return {"ok": False, "error": error_text(exc)}


def check_redis() -> dict[str, Any]:
    try:
        return {"ok": bool(redis_client().ping())}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": error_text(exc)}


def readiness() -> tuple[bool, dict[str, Any]]:
    checks = {"postgres": check_postgres(), "redis": check_redis()}
    return all(check["ok"] for check in checks.values()), checks


def _ensure_schema(conn: Any) -> None:
    if not _schema_ready.is_set():
        conn.execute(ITEMS_DDL)
        conn.execute(ITEMS_COUNTER_DDL)
        _schema_ready.set()


def _insert_item(name: str) -> int:
    with pg_connect() as conn:
        _ensure_schema(conn)
        item_id = conn.execute("INSERT INTO items (name) VALUES (%s) RETURNING id",
                               (name,)).fetchone()[0]
        conn.commit()
    return int(item_id)


def _note_task(item_id: int, task_id: str) -> None:
    with pg_connect() as conn:
        conn.execute("UPDATE items SET task_id = %s WHERE id = %s", (task_id, item_id))
        conn.commit()


def create_item(name: str) -> dict[str, Any]:
    # Two transactions, each run again if its connection is dropped before it commits
    # (retry_dropped); the job is enqueued once, between them.
    item_id = retry_dropped(lambda: _insert_item(name), "insert item")
    # Enqueued after the commit so a worker never looks for a row that is not there yet.
    task_id = asynq.enqueue(redis_client(), "item:process", {"item_id": item_id}, QUEUE)
    retry_dropped(lambda: _note_task(item_id, task_id), "note the task")
    log("item_created", item_id=item_id, task_id=task_id, queue=QUEUE)
    return {"id": item_id, "task_id": task_id, "queue": QUEUE}


def _read_item(item_id: int) -> Any:
    with pg_connect() as conn:
        _ensure_schema(conn)
        return conn.execute("SELECT id, name, created_at, task_id, processed_at, processed_by, "
                            "process_count "
                            "FROM items WHERE id = %s", (item_id,)).fetchone()


def get_item(item_id: int) -> dict[str, Any] | None:
    row = retry_dropped(lambda: _read_item(item_id), "read item")
    if row is None:
        return None
    names = ("id", "name", "created_at", "task_id", "processed_at", "processed_by",
             "process_count")
    return {name: (value.isoformat() if hasattr(value, "isoformat") else value)
            for name, value in zip(names, row, strict=True)}


def enqueue_digests(count: int, batch: str) -> dict[str, Any]:
    """``count`` digest tasks, pipelined: the tasks a nightly scheduler fans out, one per user."""
    r = redis_client()
    pipe = r.pipeline(transaction=False)
    for n in range(count):
        asynq.enqueue(pipe, "digest:send", {"batch": batch, "n": n}, QUEUE)
    pipe.execute()
    log("digests_enqueued", count=count, batch=batch, queue=QUEUE)
    return {"enqueued": count, "batch": batch, "queue": QUEUE}


class Handler(AppHandler):
    server_version = "casera-api-standin"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self.send_json(HTTPStatus.OK, {"status": "ok", "host": socket.gethostname()})
        elif path == "/readyz":
            if draining():
                # Stopping: out of the LB's rotation first, while requests are still served.
                self.send_json(HTTPStatus.SERVICE_UNAVAILABLE,
                               {"ready": False, "draining": True, "host": socket.gethostname()})
                return
            ready, checks = readiness()
            self.send_json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                       {"ready": ready, "checks": checks, "host": socket.gethostname()})
        elif path == "/secret-sources":
            self.send_json(HTTPStatus.OK, {"secrets": secret_sources()})
        elif path.startswith("/uploads/"):
            self._get_upload(path[len("/uploads/"):])
        elif path.startswith("/items/") and path[len("/items/"):].isdigit():
            try:
                item = get_item(int(path[len("/items/"):]))
            except Exception as exc:  # noqa: BLE001
                self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": error_text(exc)})
                return
            if item is None:
                self.send_json(HTTPStatus.NOT_FOUND, {"error": "no such item"})
            else:
                self.send_json(HTTPStatus.OK, item)
        else:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] == "/digests":
            self._post_digests()
            return
        if self.path.split("?", 1)[0] in ("/tokens", "/tokens/verify"):
            self._post_tokens(self.path.split("?", 1)[0])
            return
        if self.path.split("?", 1)[0] != "/items":
            self.send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            name = str(body.get("name") or "item")
        except (ValueError, AttributeError):
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": "body must be a JSON object"})
            return
        try:
            self.send_json(HTTPStatus.CREATED, create_item(name))
        except Exception as exc:  # noqa: BLE001
            log("item_failed", error=error_text(exc))
            self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": error_text(exc)})


    def do_PUT(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if not path.startswith("/uploads/"):
            self.send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > uploads.MAX_BYTES:
                raise ValueError(f"an upload is at most {uploads.MAX_BYTES} bytes")
            made = uploads.put(path[len("/uploads/"):], self.rfile.read(length))
        except ValueError as exc:
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        except uploads.UploadError as exc:
            log("upload_failed", error=str(exc))
            self.send_json(HTTPStatus.BAD_GATEWAY, {"error": str(exc)})
            return
        self.send_json(HTTPStatus.CREATED, made)

    def _get_upload(self, name: str) -> None:
        try:
            data = uploads.get(name)
        except ValueError as exc:
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        except uploads.UploadError as exc:
            if exc.status == 404:
                self.send_json(HTTPStatus.NOT_FOUND, {"error": "no such upload"})
                return
            log("download_failed", error=str(exc))
            self.send_json(HTTPStatus.BAD_GATEWAY, {"error": str(exc)})
            return
        self.send_body(HTTPStatus.OK, data, "application/octet-stream")

    def _post_tokens(self, path: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if path == "/tokens":
                self.send_json(HTTPStatus.CREATED,
                               {"token": tokens.mint(str(body.get("sub") or "user"))})
                return
            claims = tokens.verify(str(body.get("token") or ""))
        except (ValueError, AttributeError):
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": "body must be a JSON object"})
            return
        except RuntimeError as exc:
            self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        self.send_json(HTTPStatus.OK if claims else HTTPStatus.UNAUTHORIZED,
                       {"valid": bool(claims), **(claims or {})})

    def _post_digests(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            count = int(body.get("count", 0))
            batch = str(body.get("batch") or "digest")
        except (ValueError, AttributeError, TypeError):
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": "body must be a JSON object "
                                                    "with an integer count"})
            return
        if not 1 <= count <= DIGEST_BATCH_MAX:
            self.send_json(HTTPStatus.BAD_REQUEST,
                           {"error": f"count must be 1..{DIGEST_BATCH_MAX}, got {count}"})
            return
        try:
            self.send_json(HTTPStatus.ACCEPTED, enqueue_digests(count, batch))
        except Exception as exc:  # noqa: BLE001
            log("digests_failed", error=error_text(exc))
            self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": error_text(exc)})


def main() -> None:
    serve(Handler, os.environ.get("BIND", "0.0.0.0"), int(os.environ.get("PORT", "8080")),
          drain_s=drain_seconds(), secrets=secret_sources())


if __name__ == "__main__":
    main()
