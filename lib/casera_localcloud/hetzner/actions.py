"""Actions: the API answers at once with a ``running`` action; the real work runs in a
worker thread and the action turns ``success`` or ``error`` when it ends, as on Hetzner."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from casera_localcloud.hetzner.app import ApiRequest, Emulator, Response, now, page
from casera_localcloud.hetzner.errors import ApiError
from casera_localcloud.hetzner.faults import Faults
from casera_localcloud.hetzner.store import Store, public


class ActionRunner:
    def __init__(self, store: Store, faults: Faults) -> None:
        self.store, self.faults = store, faults
        self._threads: list[threading.Thread] = []
        self._node_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def create(self, command: str, resources: list[tuple[str, int]]) -> dict[str, Any]:
        with self.store.lock:
            action = {
                "id": self.store.new_id(), "command": command, "status": "running",
                "progress": 0, "started": now(), "finished": None, "error": None,
                "resources": [{"type": kind, "id": ident} for kind, ident in resources],
            }
            self.store.table("actions")[action["id"]] = action
            return action

    def finish(self, action: dict[str, Any], error: str | None = None) -> None:
        with self.store.lock:
            action.update(status="error" if error else "success", progress=100,
                          finished=now())
            if error:
                action["error"] = {"code": "action_failed", "message": error}
        self.store.save()

    def node_lock(self, name: str) -> threading.Lock:
        # Backend calls for one node must not overlap (see backend.py's contract).
        with self._guard:
            return self._node_locks.setdefault(name, threading.Lock())

    def run(self, actions: list[dict[str, Any]], work: Callable[[], None],
            node: str | None = None, on_error: Callable[[str], None] | None = None,
            can_fail: bool = True) -> None:
        """Run ``work`` in a worker thread, then finish ``actions`` with its outcome.

        ``can_fail``: whether injected action failures apply; they strike before ``work``
        so a failed action has changed nothing.
        """
        def worker() -> None:
            error: str | None = None
            delay = self.faults.settings.action_delay_s
            if delay:
                time.sleep(delay)
            try:
                if can_fail and self.faults.action_should_fail():
                    raise RuntimeError("action failed (injected by the local cloud)")
                if node:
                    with self.node_lock(node):
                        work()
                else:
                    work()
            except Exception as exc:  # noqa: BLE001 - any failure becomes the action's error
                error = str(exc) or type(exc).__name__
                if on_error:
                    on_error(error)
            for action in actions:
                self.finish(action, error)

        thread = threading.Thread(target=worker, daemon=True,
                                  name=f"hetzner-action-{actions[0]['id']}")
        with self._guard:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def wait_idle(self, timeout: float = 30) -> None:
        """Join running workers (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._guard:
                alive = [t for t in self._threads if t.is_alive()]
            if not alive:
                return
            alive[0].join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                return

    def fail_interrupted(self) -> None:
        """Actions left running by a previous process will never finish: say so."""
        with self.store.lock:
            for action in self.store.table("actions").values():
                if action["status"] == "running":
                    action.update(status="error", progress=100, finished=now(), error={
                        "code": "action_failed",
                        "message": "the emulator restarted while this action ran"})


def action_response(action: dict[str, Any]) -> Response:
    return 201, {"action": public(action)}


def actions_response(actions: list[dict[str, Any]]) -> Response:
    return 201, {"actions": public(actions)}


def get_action(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        return 200, {"action": public(app.store.get("actions", req.path_params["id"]))}


def list_actions(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        return 200, _list_actions(app, req, None)


def _list_actions(app: Emulator, req: ApiRequest,
                  resource: tuple[str, int] | None) -> dict[str, Any]:
    items = list(app.store.table("actions").values())
    if resource:
        kind, ident = resource
        items = [a for a in items if {"type": kind, "id": ident} in a["resources"]]
    if ids := req.query.get("id"):
        items = [a for a in items if str(a["id"]) in ids]
    if statuses := req.query.get("status"):
        items = [a for a in items if a["status"] in statuses]
    items.sort(key=lambda a: a["id"])
    return page(req, "actions", public(items))


def resource_actions(kind: str, table: str) -> tuple[Callable[..., Response],
                                                     Callable[..., Response]]:
    """GET /<kind>s/{id}/actions and /<kind>s/{id}/actions/{action_id} for one resource."""
    def list_for(app: Emulator, req: ApiRequest) -> Response:
        with app.store.lock:
            obj = app.store.get(table, req.path_params["id"])
            return 200, _list_actions(app, req, (kind, obj["id"]))

    def get_for(app: Emulator, req: ApiRequest) -> Response:
        with app.store.lock:
            obj = app.store.get(table, req.path_params["id"])
            action = app.store.get("actions", req.path_params["action_id"])
            if {"type": kind, "id": obj["id"]} not in action["resources"]:
                raise ApiError("not_found", f"action {action['id']} is not one of {kind} "
                               f"{obj['id']}")
            return 200, {"action": public(action)}

    return list_for, get_for
