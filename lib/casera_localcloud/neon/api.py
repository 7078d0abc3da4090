"""The subset of Neon's HTTP API v2 the runbooks use, on http://127.0.0.1:18002/api/v2.

Shapes follow Neon's API reference: bearer auth (401 otherwise), errors as JSON
``{"code": ..., "message": ...}``, changes answered with the operations they started, which
run in the background and end ``finished`` or ``failed`` (poll ``GET .../operations/{id}``).

Where Neon's exact refusal was seen in the wild it is copied (history retention over the plan
maximum: 400, empty code, "requested history retention seconds exceeds allowed maximum; ...").
The Launch-plan refusal of an IP allowlist follows the same pattern; its exact text is not
published, so runbooks should key on the status and on ``plan``, not on the words. IP Allow
is a Scale-plan feature (https://neon.com/docs/introduction/ip-allow, "available with the Neon
Scale plan"; https://neon.com/docs/guides/protected-branches).

Every error, bad input included, is Neon's ``GeneralError``: JSON with a string ``code`` and a
``message`` (both required; OpenAPI v2 ``components.schemas.GeneralError``, copy in
neondatabase/neon-api-python ``v2.json``), never an HTML page: unknown path 404, known path
with another method 405 (with ``Allow``), a body that is not a JSON object or a field of the
wrong type 400. Neon publishes no ``code`` values for these, so ``code`` stays empty rather
than invented.

Not Neon: ``POST /api/v2/_emulator/plan`` ``{"plan": "launch" | "scale"}`` moves the emulated
account to another plan (the e2e and the step tests use it; the seed's Launch is the default).
"""

from __future__ import annotations

import json
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from casera.errors import CaseraError
from casera_localcloud.http_server import (
    BaseEmulatorServer,
    JsonHandler,
    serve_until_stopped,
)
from casera_localcloud.local_credentials import read_local_secrets
from casera_localcloud.neon import cluster, pitr, roles, service, state
from casera_localcloud.neon.config import (
    DATABASE,
    MAIN_BRANCH_ID,
    RETENTION_MAX,
    ROLE,
    NeonConfig,
    load_config,
)
from casera_localcloud.neon.views import (
    branch_view,
    connection_uri,
    endpoint_view,
    project_view,
)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}


def field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str,
          required: bool = False) -> Any:
    """``obj[name]`` when it has the right JSON type; 400 naming the field otherwise."""
    if name not in obj or obj[name] is None:
        if required:
            raise ApiError(400, f"{where}.{name} is required")
        return None
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # JSON true/false are Python bools, which are ints too: never accept one for a number.
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object",
                 list: "an array"}
        wanted = " or ".join(names.get(k, k.__name__) for k in kinds)
        raise ApiError(400, f"{where}.{name} must be {wanted}, not {json.dumps(value)[:60]}")
    return value


# ---------------------------------------------------------------- operations


KEEP_OPERATIONS = 500
MAX_BODY = 1 << 20  # far above any request the runbooks send


def new_operation(st: state.State, project_id: str, branch_id: str, action: str,
                  status: str = "running") -> dict[str, Any]:
    stamp = state.now_iso()
    # The state file is read on every request: keep only the newest operations.
    if len(st["operations"]) >= KEEP_OPERATIONS:
        oldest = sorted(st["operations"].values(), key=lambda o: o["created_at"])
        for old in oldest[: len(oldest) - KEEP_OPERATIONS + 1]:
            if old["status"] not in ("running", "scheduling"):
                st["operations"].pop(old["id"])
    op = {"id": str(uuid.uuid4()), "project_id": project_id, "branch_id": branch_id,
          "endpoint_id": st["branches"].get(branch_id, {}).get("endpoint_id"),
          "action": action, "status": status, "failures_count": 0, "created_at": stamp,
          "updated_at": stamp, "total_duration_ms": 0}
    st["operations"][op["id"]] = op
    return op


def finish_operations(cfg: NeonConfig, op_ids: list[str], error: str | None,
                      started: float) -> None:
    with state.locked(cfg) as st:
        for op_id in op_ids:
            op = st["operations"][op_id]
            op["status"] = "failed" if error else "finished"
            op["updated_at"] = state.now_iso()
            op["total_duration_ms"] = int((time.monotonic() - started) * 1000)
            if error:
                op["error"] = error
                op["failures_count"] = 1


def run_in_background(cfg: NeonConfig, op_ids: list[str], work: Callable[[], None],
                      on_error: Callable[[], None] | None = None) -> None:
    def runner() -> None:
        started = time.monotonic()
        try:
            work()
            finish_operations(cfg, op_ids, None, started)
        except Exception as exc:  # noqa: BLE001 - the operation's failure is reported
            traceback.print_exc()
            if on_error:
                on_error()
            finish_operations(cfg, op_ids, f"{type(exc).__name__}: {exc}", started)

    threading.Thread(target=runner, daemon=True).start()


# ---------------------------------------------------------------- handlers


def parse_timestamp(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ApiError(400, f"invalid parent_timestamp {value!r}: {exc}") from exc
    if when.tzinfo is None:
        raise ApiError(400, f"parent_timestamp {value!r} needs a time zone (RFC 3339)")
    return when.astimezone(UTC)


class Api:
    def __init__(self, cfg: NeonConfig) -> None:
        self.cfg = cfg
        # One branch change at a time: slots and PITR restores must not interleave.
        self.branch_lock = threading.Lock()

    def project(self, st: state.State, project_id: str) -> dict[str, Any]:
        project = st["project"]
        if project is None or project["id"] != project_id:
            raise ApiError(404, f"project {project_id} not found")
        return project

    def branch(self, st: state.State, project_id: str, branch_id: str) -> dict[str, Any]:
        self.project(st, project_id)
        branch = st["branches"].get(branch_id)
        if branch is None:
            raise ApiError(404, f"branch {branch_id} not found")
        return branch

    # GET /projects
    def list_projects(self) -> dict[str, Any]:
        st = state.read(self.cfg)
        return {"projects": [project_view(st["project"])] if st["project"] else []}

    # GET /projects/{id}/endpoints
    def list_endpoints(self, project_id: str) -> dict[str, Any]:
        st = state.read(self.cfg)
        self.project(st, project_id)
        return {"endpoints": [endpoint_view(project_id, b)
                              for b in st["branches"].values() if b.get("endpoint_id")]}

    # GET /projects/{id}
    def get_project(self, project_id: str) -> dict[str, Any]:
        st = state.read(self.cfg)
        return {"project": project_view(self.project(st, project_id))}

    # PATCH /projects/{id}
    def patch_project(self, project_id: str, body: dict[str, Any]) -> dict[str, Any]:
        changes = field(body, "project", dict, "body", required=True)
        wanted = field(changes, "history_retention_seconds", int, "project")
        settings = field(changes, "settings", dict, "project") or {}
        allowed = field(settings, "allowed_ips", dict, "project.settings")
        name = field(changes, "name", str, "project")
        ips: list[str] = []
        protected_only = False
        if allowed is not None:
            where = "project.settings.allowed_ips"
            ips = field(allowed, "ips", list, where) or []
            for i, ip in enumerate(ips):
                if not isinstance(ip, str):
                    raise ApiError(400, f"{where}.ips[{i}] must be a string, not "
                                        f"{json.dumps(ip)[:60]}")
            flags = [field(allowed, key, bool, where)
                     for key in ("protected_branches_only", "primary_branch_only")]
            protected_only = next((f for f in flags if f is not None), False)
        with state.locked(self.cfg) as st:
            project = self.project(st, project_id)
            plan = project["plan"]
            if wanted is not None:
                if wanted < 0:
                    raise ApiError(400, "project.history_retention_seconds must not be "
                                        "negative")
                if wanted > RETENTION_MAX[plan]:
                    raise ApiError(400, "requested history retention seconds exceeds allowed "
                                        f"maximum; requested_history_retention_seconds:"
                                        f"\"{wanted}\", max:\"{RETENTION_MAX[plan]}\"")
                project["history_retention_seconds"] = wanted
            if allowed is not None:
                if plan != "scale" and (ips or protected_only):
                    raise ApiError(400, f"IP Allow is not available on the {plan.title()} "
                                        "plan; it requires the Scale plan (or higher)")
                problem = cluster.validate_allowlist(ips)
                if problem:
                    raise ApiError(400, f"invalid allowed_ips: {problem}")
                project["settings"]["allowed_ips"] = {
                    "ips": ips, "protected_branches_only": protected_only}
            if name is not None:
                project["name"] = name
            project["updated_at"] = state.now_iso()
            op = new_operation(st, project_id, MAIN_BRANCH_ID, "apply_config", "finished")
            snapshot = {"project": dict(project), "branches": dict(st["branches"])}
        # Applied before answering, so the next connection meets the new allowlist.
        service.apply_allowlist(self.cfg, snapshot)
        return {"project": project_view(snapshot["project"]), "operations": [op]}

    # GET /projects/{id}/branches
    def list_branches(self, project_id: str) -> dict[str, Any]:
        st = state.read(self.cfg)
        self.project(st, project_id)
        return {"branches": [branch_view(project_id, b) for b in st["branches"].values()]}

    # GET /projects/{id}/branches/{branch_id}
    def get_branch(self, project_id: str, branch_id: str) -> dict[str, Any]:
        st = state.read(self.cfg)
        return {"branch": branch_view(project_id, self.branch(st, project_id, branch_id))}

    # GET /projects/{id}/branches/{branch_id}/endpoints
    def branch_endpoints(self, project_id: str, branch_id: str) -> dict[str, Any]:
        st = state.read(self.cfg)
        branch = self.branch(st, project_id, branch_id)
        return {"endpoints": [endpoint_view(project_id, branch)]
                if branch.get("endpoint_id") else []}

    def check_target(self, project: dict[str, Any], raw: str, name: str) -> datetime:
        """A point in the project's history, or 400 naming the field: not in the future,
        inside the history retention window, and after the first base backup (the local
        project holds nothing older)."""
        now = datetime.now(UTC)
        try:
            target = parse_timestamp(raw)
        except ApiError as exc:
            raise ApiError(400, exc.message.replace("parent_timestamp", name)) from exc
        if target > now + timedelta(seconds=1):
            raise ApiError(400, f"{name} {raw} is in the future")
        retention = project["history_retention_seconds"]
        if target < now - timedelta(seconds=retention):
            raise ApiError(400, f"{name} {raw} is outside the history retention "
                                f"window of the project (history_retention_seconds: "
                                f"{retention}); the earliest point is "
                                f"{(now - timedelta(seconds=retention)).isoformat()}")
        start = pitr.history_start(self.cfg)
        if start is None or target <= start:
            raise ApiError(400, f"{name} {raw} is before the history this local "
                                f"project holds (from "
                                f"{start.isoformat() if start else 'nothing yet'})")
        return target

    @staticmethod
    def wants_compute(endpoints: list[Any] | None, where: str) -> bool:
        """Whether a request's ``endpoints`` asks for a compute. Neon makes a branch without
        one unless asked ("This method does not require a request body, but you can specify
        one to create a compute endpoint for the branch",
        https://api-docs.neon.tech/reference/createprojectbranch); the local Neon has
        read_write computes only."""
        for i, spec in enumerate(endpoints or []):
            if not isinstance(spec, dict):
                raise ApiError(400, f"{where}[{i}] must be an object")
            kind = field(spec, "type", str, f"{where}[{i}]", required=True)
            if kind != "read_write":
                raise ApiError(400, f"{where}[{i}].type {kind!r}: the local Neon makes "
                                    "read_write computes only")
        if len(endpoints or []) > 1:
            raise ApiError(400, f"{where}: a branch has at most one read_write compute")
        return bool(endpoints)

    @staticmethod
    def free_slot(st: state.State) -> int:
        used = {b.get("slot") for b in st["branches"].values()}
        return next(i for i in range(1000) if i not in used)

    @staticmethod
    def unique_name(st: state.State, name: str) -> None:
        if any(b["name"] == name for b in st["branches"].values()):
            raise ApiError(409, f"a branch named {name!r} already exists in the project")

    # POST /projects/{id}/branches
    def create_branch(self, project_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        spec = field(body, "branch", dict, "body") or {}
        compute = self.wants_compute(field(body, "endpoints", list, "body"), "endpoints")
        for key in ("parent_id", "parent_timestamp", "parent_lsn", "name"):
            field(spec, key, str, "branch")
        if spec.get("parent_lsn"):
            raise ApiError(400, "parent_lsn is not supported by the local Neon; use "
                                "parent_timestamp")
        with self.branch_lock, state.locked(self.cfg) as st:
            project = self.project(st, project_id)
            parent_id = spec.get("parent_id") or project["default_branch_id"]
            if parent_id not in st["branches"]:
                raise ApiError(404, f"branch {parent_id} not found")
            if parent_id != MAIN_BRANCH_ID:
                raise ApiError(400, "the local Neon branches from the default branch only")
            raw = spec.get("parent_timestamp")
            target = (self.check_target(project, raw, "parent_timestamp") if raw
                      else datetime.now(UTC))
            if raw is None and pitr.history_start(self.cfg) is None:
                raise ApiError(400, "the local project has no history to branch from yet")
            suffix = uuid.uuid4().hex[:8]
            branch_id = f"br-local-{suffix}"
            if spec.get("name"):
                self.unique_name(st, spec["name"])
            stamp = state.now_iso()
            branch = {"id": branch_id, "name": spec.get("name") or branch_id,
                      "parent_id": parent_id,
                      "parent_timestamp": target.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                      "endpoint_id": f"ep-local-{suffix}" if compute else None,
                      "slot": self.free_slot(st) if compute else None,
                      # Without a compute the branch is only a point in the history: a
                      # compute added later (POST .../endpoints) is restored to it then.
                      "has_data": False,
                      "current_state": "init" if compute else "ready", "default": False,
                      "protected": False, "created_at": stamp, "updated_at": stamp}
            st["branches"][branch_id] = branch
            ops = [new_operation(st, project_id, branch_id, "create_branch",
                                 "running" if compute else "finished")]
            if compute:
                ops.append(new_operation(st, project_id, branch_id, "start_compute"))

        if compute:
            self.start_compute_in_background(branch_id, target, [op["id"] for op in ops])
        answer = {
            "branch": branch_view(project_id, branch),
            "endpoints": [endpoint_view(project_id, branch)] if compute else [],
            "operations": ops,
            "roles": [{"branch_id": branch_id, "name": ROLE, "protected": False}],
            "databases": [{"branch_id": branch_id, "name": DATABASE, "owner_name": ROLE}],
        }
        password = read_local_secrets().get("CASERA_DB_PASSWORD")
        if password and compute:
            uri = connection_uri(self.cfg, branch, DATABASE, ROLE, password, pooled=False)
            answer["connection_uris"] = [{"connection_uri": uri}]
        return 201, answer

    def start_compute_in_background(self, branch_id: str, target: datetime | None,
                                    op_ids: list[str]) -> None:
        """The branch's compute: its kept data directory started, or (``target``) the main
        branch's history restored to it."""

        def work() -> None:
            with self.branch_lock:
                if target is None:
                    service.start_kept_branch_compute(self.cfg, branch_id)
                else:
                    service.create_branch_compute(self.cfg, branch_id, target)
            with state.locked(self.cfg) as st2:
                st2["branches"][branch_id]["current_state"] = "ready"
                st2["branches"][branch_id]["updated_at"] = state.now_iso()

        def failed() -> None:
            with state.locked(self.cfg) as st2:
                st2["branches"][branch_id]["current_state"] = "failed"

        run_in_background(self.cfg, op_ids, work, failed)

    # POST /projects/{id}/endpoints
    def create_endpoint(self, project_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A compute for a branch that has none (a point-in-time branch made without
        ``endpoints``, a branch preserved by a restore); Neon's createProjectEndpoint
        (https://api-docs.neon.tech/reference/createprojectendpoint)."""
        spec = field(body, "endpoint", dict, "body", required=True)
        branch_id = field(spec, "branch_id", str, "endpoint", required=True)
        kind = field(spec, "type", str, "endpoint", required=True)
        if kind != "read_write":
            raise ApiError(400, f"endpoint.type {kind!r}: the local Neon makes read_write "
                                "computes only")
        with self.branch_lock, state.locked(self.cfg) as st:
            branch = self.branch(st, project_id, branch_id)
            if branch.get("endpoint_id"):
                raise ApiError(400, f"branch {branch_id} already has a read_write endpoint "
                                    f"({branch['endpoint_id']})")
            if branch["current_state"] != "ready":
                raise ApiError(423, "branch has running operations; retry when they finish",
                               "LOCKED")
            suffix = uuid.uuid4().hex[:8]
            branch.update(endpoint_id=f"ep-local-{suffix}", slot=self.free_slot(st),
                          current_state="init", updated_at=state.now_iso())
            ops = [new_operation(st, project_id, branch_id, "start_compute")]
            snapshot = dict(branch)
        target = None if snapshot.get("has_data") else parse_timestamp(
            snapshot["parent_timestamp"])
        self.start_compute_in_background(branch_id, target, [op["id"] for op in ops])
        return 201, {"endpoint": endpoint_view(project_id, snapshot), "operations": ops}

    # POST /projects/{id}/branches/{branch_id}/restore
    def restore_branch(self, project_id: str, branch_id: str,
                       body: dict[str, Any]) -> dict[str, Any]:
        """Restore a branch in place to a point of its own history, as Neon's
        restoreProjectBranch (https://neon.com/docs/reference/api/branches/restore-project-branch):
        ``source_branch_id`` required; when it is the branch itself, ``source_timestamp`` (or
        ``source_lsn``) is required, and so is ``preserve_under_name`` ("If the branch has
        children or the source_branch_id is equal to the branch's id, this field is
        required"). The branch keeps its id and its compute's connection strings; the state
        before the restore becomes a new branch named ``preserve_under_name``, with no
        compute, and the branch's children move to it.

        Locally: the default branch only, from its own history by timestamp only."""
        source_id = field(body, "source_branch_id", str, "body", required=True)
        raw = field(body, "source_timestamp", str, "body")
        lsn = field(body, "source_lsn", str, "body")
        preserve = field(body, "preserve_under_name", str, "body")
        if lsn:
            raise ApiError(400, "source_lsn is not supported by the local Neon; use "
                                "source_timestamp")
        with self.branch_lock, state.locked(self.cfg) as st:
            project = self.project(st, project_id)
            branch = self.branch(st, project_id, branch_id)
            if source_id not in st["branches"]:
                raise ApiError(404, f"branch {source_id} not found")
            if source_id != branch_id:
                raise ApiError(400, "the local Neon restores a branch from its own history "
                                    "only (source_branch_id must equal the branch's id)")
            if not raw:
                raise ApiError(400, "source_timestamp or source_lsn is required when "
                                    "source_branch_id is the branch itself")
            if not preserve:
                raise ApiError(400, "preserve_under_name is required when source_branch_id "
                                    "is the branch itself")
            if branch_id != MAIN_BRANCH_ID:
                raise ApiError(400, "the local Neon restores the default branch only")
            if branch["current_state"] != "ready":
                raise ApiError(423, "branch has running operations; retry when they finish",
                               "LOCKED")
            target = self.check_target(project, raw, "source_timestamp")
            self.unique_name(st, preserve)
            suffix = uuid.uuid4().hex[:8]
            kept_id = f"br-local-{suffix}"
            stamp = state.now_iso()
            # The slot is the restore's scratch compute while it runs, then given back.
            st["branches"][kept_id] = {
                "id": kept_id, "name": preserve, "parent_id": None, "parent_timestamp": None,
                "endpoint_id": None, "slot": self.free_slot(st), "has_data": True,
                "current_state": "init", "default": False, "protected": False,
                "created_at": stamp, "updated_at": stamp}
            branch.update(current_state="init", updated_at=stamp)
            ops = [new_operation(st, project_id, kept_id, "create_branch"),
                   new_operation(st, project_id, branch_id, "suspend_compute"),
                   new_operation(st, project_id, branch_id, "start_compute")]
            slot = st["branches"][kept_id]["slot"]
            snapshot = dict(branch)

        def work() -> None:
            with self.branch_lock:
                service.restore_main_in_place(self.cfg, target, kept_id, slot)
                for line in roles.reapply(self.cfg):
                    print(line, flush=True)
            with state.locked(self.cfg) as st2:
                now = state.now_iso()
                for child in st2["branches"].values():
                    if child.get("parent_id") == branch_id:
                        child["parent_id"] = kept_id
                st2["branches"][kept_id].update(current_state="ready", slot=None,
                                                updated_at=now)
                st2["branches"][branch_id].update(current_state="ready", updated_at=now,
                                                  last_reset_at=now)

        def failed() -> None:
            # restore_main_in_place leaves the main branch as it was when it fails.
            with state.locked(self.cfg) as st2:
                st2["branches"].pop(kept_id, None)
                st2["branches"][branch_id]["current_state"] = "ready"

        run_in_background(self.cfg, [op["id"] for op in ops], work, failed)
        return {"branch": branch_view(project_id, snapshot), "operations": ops}

    # DELETE /projects/{id}/branches/{branch_id}
    def delete_branch(self, project_id: str, branch_id: str) -> dict[str, Any]:
        with state.locked(self.cfg) as st:
            branch = self.branch(st, project_id, branch_id)
            if branch.get("default"):
                raise ApiError(400, "cannot delete the project's default branch")
            if branch.get("protected"):
                raise ApiError(400, "cannot delete a protected branch")
            if branch["current_state"] == "init":
                raise ApiError(423, "branch has running operations; retry when they finish",
                               "LOCKED")
            branch["current_state"] = "deleting"
            ops = [new_operation(st, project_id, branch_id, "suspend_compute"),
                   new_operation(st, project_id, branch_id, "delete_timeline")]
            snapshot = dict(branch)

        def work() -> None:
            with self.branch_lock:
                service.delete_branch_compute(self.cfg, snapshot)
            with state.locked(self.cfg) as st2:
                st2["branches"].pop(branch_id, None)

        run_in_background(self.cfg, [op["id"] for op in ops], work)
        return {"branch": branch_view(project_id, snapshot), "operations": ops}

    # ------------------------------------------------------------ roles
    # Neon API v2: listProjectBranchRoles, createProjectBranchRole, getProjectBranchRole,
    # resetProjectBranchRolePassword, getProjectBranchRolePassword (reveal_password),
    # deleteProjectBranchRole (https://api-docs.neon.tech/reference/createprojectbranchrole,
    # https://neon.com/docs/reference/api/branches/reset-project-branch-role-password.md).
    # Changes answer {"role": ..., "operations": [...]}; the new password is in the answer
    # of create and reset_password only. Locally: roles of the default branch only (a
    # branch's compute is a copy of it at its point in time).

    def role_branch(self, st: state.State, project_id: str, branch_id: str) -> dict[str, Any]:
        branch = self.branch(st, project_id, branch_id)
        if branch_id != MAIN_BRANCH_ID:
            raise ApiError(400, "the local Neon manages the roles of the default branch only")
        if branch["current_state"] != "ready":
            raise ApiError(423, "branch has running operations; retry when they finish",
                           "LOCKED")
        return branch

    @staticmethod
    def role_record(st: state.State, name: str) -> dict[str, Any]:
        record = roles.records(st).get(name)
        if record is None:
            raise ApiError(404, f"role {name!r} not found")
        return record

    # GET /projects/{id}/branches/{branch_id}/roles
    def list_roles(self, project_id: str, branch_id: str) -> dict[str, Any]:
        st = state.read(self.cfg)
        self.role_branch(st, project_id, branch_id)
        return {"roles": [roles.view(branch_id, r)
                          for _, r in sorted(roles.records(st).items())]}

    # GET /projects/{id}/branches/{branch_id}/roles/{role_name}
    def get_role(self, project_id: str, branch_id: str, role_name: str) -> dict[str, Any]:
        st = state.read(self.cfg)
        self.role_branch(st, project_id, branch_id)
        return {"role": roles.view(branch_id, self.role_record(st, role_name))}

    # POST /projects/{id}/branches/{branch_id}/roles
    def create_role(self, project_id: str, branch_id: str,
                    body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        spec = field(body, "role", dict, "body", required=True)
        name = field(spec, "name", str, "role", required=True)
        field(spec, "no_login", bool, "role")
        if spec.get("no_login"):
            raise ApiError(400, "role.no_login: the local Neon makes login roles only")
        problem = roles.name_problem(name)
        if problem:
            raise ApiError(400, problem)
        with state.locked(self.cfg) as st:
            self.role_branch(st, project_id, branch_id)
            if name in roles.records(st):
                raise ApiError(409, f"role {name!r} already exists")
            password = roles.new_password()
            # The compute first: a role the API lists exists in PostgreSQL.
            roles.create(self.cfg, name, password)
            stamp = state.now_iso()
            record = {"name": name, "protected": False, "created_at": stamp,
                      "updated_at": stamp, "password": password}
            roles.records(st)[name] = record
            op = new_operation(st, project_id, branch_id, "apply_config", "finished")
        # The pooler reads the role list from the state, written when the lock is let go.
        roles.refresh_pooler(self.cfg)
        return 201, {"role": roles.view(branch_id, record, password), "operations": [op]}

    # POST /projects/{id}/branches/{branch_id}/roles/{role_name}/reset_password
    def reset_role_password(self, project_id: str, branch_id: str, role_name: str,
                            body: dict[str, Any]) -> dict[str, Any]:
        with state.locked(self.cfg) as st:
            self.role_branch(st, project_id, branch_id)
            record = self.role_record(st, role_name)
            password = roles.new_password()
            # At once, as on Neon: the next connection with the old password is refused.
            roles.set_password(self.cfg, role_name, password)
            record.update(password=password, updated_at=state.now_iso())
            op = new_operation(st, project_id, branch_id, "apply_config", "finished")
        roles.refresh_pooler(self.cfg)
        return {"role": roles.view(branch_id, record, password), "operations": [op]}

    # GET /projects/{id}/branches/{branch_id}/roles/{role_name}/reveal_password
    def reveal_role_password(self, project_id: str, branch_id: str,
                             role_name: str) -> dict[str, Any]:
        st = state.read(self.cfg)
        self.role_branch(st, project_id, branch_id)
        record = self.role_record(st, role_name)
        password = record.get("password") or (
            read_local_secrets().get("CASERA_DB_PASSWORD") if role_name == ROLE else None)
        if not password:
            raise ApiError(404, f"role {role_name!r} has no stored password")
        return {"password": password}

    # DELETE /projects/{id}/branches/{branch_id}/roles/{role_name}
    def delete_role(self, project_id: str, branch_id: str, role_name: str) -> dict[str, Any]:
        with state.locked(self.cfg) as st:
            self.role_branch(st, project_id, branch_id)
            record = self.role_record(st, role_name)
            if role_name == ROLE:
                # Neon deletes a role's databases with it; the local project has one database
                # and its owner is this role: refused rather than emptied.
                raise ApiError(400, f"role {role_name!r} owns database {DATABASE!r}; the "
                                    "local Neon does not delete the project's database")
            roles.drop(self.cfg, role_name)
            roles.records(st).pop(role_name)
            op = new_operation(st, project_id, branch_id, "apply_config", "finished")
        roles.refresh_pooler(self.cfg)
        return {"role": roles.view(branch_id, record), "operations": [op]}

    # GET /projects/{id}/connection_uri
    def get_connection_uri(self, project_id: str, query: dict[str, str]) -> dict[str, Any]:
        st = state.read(self.cfg)
        project = self.project(st, project_id)
        for required in ("database_name", "role_name"):
            if not query.get(required):
                raise ApiError(400, f"missing required query parameter {required}")
        branch = self.branch(st, project_id, query.get("branch_id")
                             or project["default_branch_id"])
        if not branch.get("endpoint_id"):
            raise ApiError(404, f"branch {branch['id']} has no compute endpoint: add one "
                                "(POST /projects/{project_id}/endpoints)")
        record = roles.records(st).get(query["role_name"])
        if record is None:
            raise ApiError(404, f"role {query['role_name']} not found")
        if query["database_name"] != DATABASE:
            raise ApiError(404, f"database {query['database_name']} not found")
        # The password Neon stores for the role: the API's last reset or creation, else (the
        # owner role, never reset) the one `casera local up` gave it.
        password = record.get("password") or read_local_secrets().get("CASERA_DB_PASSWORD")
        if not password:
            raise ApiError(500, "CASERA_DB_PASSWORD is missing from secrets/local.env")
        pooled_raw = query.get("pooled", "false").lower()
        if pooled_raw not in ("true", "false"):
            raise ApiError(400, f"query parameter pooled must be true or false, not "
                                f"{query['pooled']!r}")
        pooled = pooled_raw == "true"
        return {"uri": connection_uri(self.cfg, branch, query["database_name"],
                                      query["role_name"], password, pooled)}

    # GET /projects/{id}/operations/{op}
    def get_operation(self, project_id: str, op_id: str) -> dict[str, Any]:
        st = state.read(self.cfg)
        self.project(st, project_id)
        op = st["operations"].get(op_id)
        if op is None:
            raise ApiError(404, f"operation {op_id} not found")
        return {"operation": op}

    # POST /_emulator/plan (not Neon: the local account's plan, for tests and demos)
    def set_plan(self, body: dict[str, Any]) -> dict[str, Any]:
        plan = field(body, "plan", str, "body", required=True)
        with state.locked(self.cfg) as st:
            if st["project"] is None:
                raise ApiError(404, "no project yet: run `casera local up`")
            try:
                lines = service.change_plan(st, plan)
            except service.PlanRefused as exc:
                raise ApiError(400, str(exc)) from exc
            snapshot = {"project": dict(st["project"]), "branches": dict(st["branches"])}
        return {"project": project_view(snapshot["project"]), "changes": lines}

    # GET /users/me
    def me(self) -> dict[str, Any]:
        st = state.read(self.cfg)
        plan = st["project"]["plan"] if st["project"] else "launch"
        return {"id": "local-user", "email": "operator@casera.local", "name": "casera local",
                "plan": plan, "projects_limit": 1}


# A branch's roles (Neon API v2: /projects/{project_id}/branches/{branch_id}/roles/...).
ROLES = r"/projects/(?P<project_id>[^/]+)/branches/(?P<branch_id>[^/]+)/roles"
ROLE_PATH = ROLES + r"/(?P<role_name>[^/]+)"

ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile("^/api/v2" + p + "$"), h) for m, p, h in [
        ("GET", r"/users/me", "me"),
        ("GET", r"/projects", "list_projects"),
        ("GET", r"/projects/(?P<project_id>[^/]+)/endpoints", "list_endpoints"),
        ("POST", r"/projects/(?P<project_id>[^/]+)/endpoints", "create_endpoint"),
        ("GET", r"/projects/(?P<project_id>[^/]+)", "get_project"),
        ("PATCH", r"/projects/(?P<project_id>[^/]+)", "patch_project"),
        ("GET", r"/projects/(?P<project_id>[^/]+)/branches", "list_branches"),
        ("POST", r"/projects/(?P<project_id>[^/]+)/branches", "create_branch"),
        ("GET", r"/projects/(?P<project_id>[^/]+)/branches/(?P<branch_id>[^/]+)", "get_branch"),
        ("DELETE", r"/projects/(?P<project_id>[^/]+)/branches/(?P<branch_id>[^/]+)",
         "delete_branch"),
        ("GET", r"/projects/(?P<project_id>[^/]+)/branches/(?P<branch_id>[^/]+)/endpoints",
         "branch_endpoints"),
        ("POST", r"/projects/(?P<project_id>[^/]+)/branches/(?P<branch_id>[^/]+)/restore",
         "restore_branch"),
        ("GET", r"/projects/(?P<project_id>[^/]+)/connection_uri", "get_connection_uri"),
        ("GET", ROLES, "list_roles"),
        ("POST", ROLES, "create_role"),
        ("GET", ROLE_PATH, "get_role"),
        ("DELETE", ROLE_PATH, "delete_role"),
        ("POST", ROLE_PATH + "/reset_password", "reset_role_password"),
        ("GET", ROLE_PATH + "/reveal_password", "reveal_role_password"),
        ("GET", r"/projects/(?P<project_id>[^/]+)/operations/(?P<op_id>[^/]+)",
         "get_operation"),
        ("POST", r"/_emulator/plan", "set_plan"),
    ]
]


def find_route(method: str, path: str) -> tuple[str, dict[str, Any]]:
    allowed = []
    for route_method, pattern, name in ROUTES:
        match = pattern.match(path)
        if match and route_method == method:
            return name, {k: unquote(v) for k, v in match.groupdict().items()}
        if match:
            allowed.append(route_method)
    if allowed:
        raise ApiError(405, f"method {method} is not allowed on {path}; allowed: "
                            f"{', '.join(allowed)}", headers={"Allow": ", ".join(allowed)})
    raise ApiError(404, f"no route for {method} {path}: not part of Neon's API v2 as the "
                        "local Neon serves it (see casera_localcloud.neon.api.ROUTES)")


def read_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, not {type(body).__name__}")
    return body


def make_handler(api: Api) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def log_message(self, fmt: str, *args: Any) -> None:
            # Never the headers: they carry the bearer token.
            print(f"{self.address_string()} {fmt % args}", flush=True)

        def refusal(self, code: int, message: str | None,
                    explain: str | None) -> tuple[int, object]:
            """Neon's JSON shape. A method http.server has no handler for is a client
            error here (405), not a 501."""
            if code == HTTPStatus.NOT_IMPLEMENTED:
                code = HTTPStatus.METHOD_NOT_ALLOWED
                message = f"method {self.command} is not allowed"
            return code, {"code": "", "message": message or HTTPStatus(code).phrase}

        def _authorized(self) -> bool:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Bearer "):
                return False
            expected = state.read(api.cfg).get("api_key_sha256")
            return bool(expected) and service.api_key_hash(header[7:].strip()) == expected

        def _read_raw(self) -> bytes:
            length = self.body_length()
            if length is None:
                self.close_connection = True  # the body's end is unknown
                raise ApiError(400, f"Content-Length {self.headers.get('Content-Length')!r} "
                                    "is not a byte count")
            if length > MAX_BODY:
                self.close_connection = True
                raise ApiError(413, f"request body of {length} bytes is over {MAX_BODY}")
            return self.rfile.read(length) if length else b""

        def dispatch(self) -> None:
            method = self.command
            url = urlparse(self.path)
            try:
                raw = self._read_raw()
                if not self._authorized():
                    raise ApiError(401, "authentication required")
                name, kwargs = find_route(method, url.path)
                if method in ("POST", "PATCH"):
                    kwargs["body"] = read_body(raw)
                if name == "get_connection_uri":
                    kwargs["query"] = {k: v[0] for k, v in parse_qs(url.query).items()}
                result = getattr(api, name)(**kwargs)
                status, payload = result if isinstance(result, tuple) else (200, result)
                self.send_json(status, payload)
            except ApiError as exc:
                self.send_json(exc.status, {"code": exc.code, "message": exc.message},
                               exc.headers)
            except CaseraError as exc:
                self.send_json(500, {"code": "", "message": str(exc)})
            except Exception as exc:  # noqa: BLE001 - a bug here is still answered as JSON
                traceback.print_exc()
                self.send_json(500, {"code": "", "message": f"internal error in the local "
                                                            f"Neon: {type(exc).__name__} "
                                                            "(see api.log)"})

    return Handler


def base_backup_loop(cfg: NeonConfig, stop: threading.Event) -> None:
    """Keep base backups fresh while the API runs, so branch restores replay little WAL."""
    while not stop.wait(600):
        try:
            st = state.read(cfg)
            if st["project"]:
                for line in service.maybe_base_backup(
                        cfg, st["project"]["history_retention_seconds"]):
                    print(line, flush=True)
        except Exception:  # noqa: BLE001 - retried at the next turn; the log says why
            traceback.print_exc()


def fail_interrupted_work(cfg: NeonConfig) -> None:
    """Operations a previous server left running can never finish: say so, as Neon would."""
    with state.locked(cfg) as st:
        for op in st["operations"].values():
            if op["status"] in ("running", "scheduling"):
                op.update(status="failed", error="the API server stopped while it ran",
                          updated_at=state.now_iso())
        for branch in st["branches"].values():
            if branch["current_state"] in ("init", "deleting"):
                branch["current_state"] = "failed"


def serve(cfg: NeonConfig | None = None) -> None:
    cfg = cfg or load_config()
    fail_interrupted_work(cfg)
    server = BaseEmulatorServer(("127.0.0.1", cfg.api_port), make_handler(Api(cfg)))
    stop = threading.Event()
    threading.Thread(target=base_backup_loop, args=(cfg, stop), daemon=True).start()
    print(f"Neon API emulator on {cfg.api_url}", flush=True)
    try:
        serve_until_stopped(server)
    finally:
        stop.set()
