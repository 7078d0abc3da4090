"""The Neon HTTP API v2. Neon's own Python client (``neon-api``) lacks calls the runbooks need
(branch restore), so this is a thin ``requests`` wrapper with Neon's error shape kept.

Facts come back as plain data (:class:`NeonProject`); a change waits for the operations it
started (:meth:`NeonClient.update_project_and_wait`). Every failure, an HTTP error or the
transport's, is a :class:`casera.errors.ProviderError` (system ``neon``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from casera.errors import ProviderError
from casera.operator_secrets import Secret
from casera.progress import wait_for

# An operation's status is one of scheduling, running, finished, failed, error, cancelling,
# cancelled, skipped (Neon's OpenAPI spec, Operation.status;
# https://api-docs.neon.tech/reference/getprojectoperation).
OPERATION_DONE = ("finished", "skipped", "cancelled")
OPERATION_FAILED = ("failed", "error")


@dataclass(frozen=True)
class NeonProject:
    """What the steps decide on. ``plan`` is the plan as Neon names it (``launch_v3`` ...):
    the project owner's ``subscription_type``, else the API key user's ``plan``."""

    id: str
    name: str
    plan: str
    history_retention_seconds: int
    allowed_ips: tuple[str, ...]
    protected_branches_only: bool


class NeonClient:
    def __init__(self, api_endpoint: str, api_key: Secret, timeout: float = 10.0) -> None:
        self._base = api_endpoint.rstrip("/")
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {api_key.reveal()}"
        self._session.headers["Accept"] = "application/json"
        self._timeout = timeout

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._session.request(method, self._base + path,
                                             timeout=self._timeout, **kwargs)
        except requests.RequestException as exc:
            raise ProviderError("neon", f"{method} {path}: {type(exc).__name__}: {exc}",
                                code=type(exc).__name__) from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"message": response.text[:200]}
            raise ProviderError("neon", f"{method} {path}: HTTP {response.status_code}: "
                                f"{body.get('message', '')}", code=body.get("code"),
                                details=body)
        return response.json() if response.content else {}

    def get_project(self, project_id: str) -> dict[str, Any]:
        return self.request("GET", f"/projects/{project_id}")["project"]

    def get_current_user(self) -> dict[str, Any]:
        """The API key's user; its ``plan`` is the account's plan."""
        return self.request("GET", "/users/me")

    def project(self, project_id: str) -> NeonProject:
        """The project's facts. The plan is read from ``owner.subscription_type`` first: it
        is the plan of whoever owns the project (an organisation's, not the API key
        user's); ``/users/me`` only when it is absent."""
        found = self.get_project(project_id)
        plan = str((found.get("owner") or {}).get("subscription_type") or "")
        if not plan:
            plan = str(self.get_current_user().get("plan") or "")
        allowed = (found.get("settings") or {}).get("allowed_ips") or {}
        return NeonProject(
            id=str(found.get("id") or project_id), name=str(found.get("name") or project_id),
            plan=plan or "unknown",
            history_retention_seconds=int(found.get("history_retention_seconds") or 0),
            allowed_ips=tuple(str(ip) for ip in allowed.get("ips") or []),
            # primary_branch_only is the older name of the same switch.
            protected_branches_only=bool(allowed.get(
                "protected_branches_only", allowed.get("primary_branch_only", False))))

    def update_project(self, project_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """PATCH the project; the answer holds the project and the operations it started."""
        return self.request("PATCH", f"/projects/{project_id}", json={"project": changes})

    def get_operation(self, project_id: str, operation_id: str) -> dict[str, Any]:
        return self.request("GET", f"/projects/{project_id}/operations/{operation_id}"
                            )["operation"]

    def update_project_and_wait(self, project_id: str, changes: dict[str, Any],
                                timeout: float = 120) -> None:
        """PATCH the project, then wait until every operation it started has finished."""
        answer = self.update_project(project_id, changes)
        self.wait_operations(project_id, answer, "Neon to apply the project change", timeout)

    def wait_operations(self, project_id: str, answer: dict[str, Any], what: str,
                        timeout: float) -> None:
        """Wait until every operation in ``answer`` has ended; a failed one raises."""
        pending = [op["id"] for op in answer.get("operations") or []]

        def settled() -> list[str] | None:
            states = [str(self.get_operation(project_id, op)["status"]) for op in pending]
            done = all(s in OPERATION_DONE + OPERATION_FAILED for s in states)
            return states if done else None

        if not pending:
            return
        # A failed operation ends the wait at once (wait_for retries a probe that raises).
        states = wait_for(f"{what} ({len(pending)} operation(s))", settled, timeout,
                          interval=0.5)
        if any(s in OPERATION_FAILED for s in states):
            raise ProviderError("neon", f"operation(s) of project {project_id} failed: "
                                f"{states}", code="operation_failed", details=states)

    # ------------------------------------------------------------ branches

    def branches(self, project_id: str) -> list[NeonBranch]:
        answer = self.request("GET", f"/projects/{project_id}/branches")
        return [NeonBranch.from_api(b) for b in answer.get("branches") or []]

    def branch_by_name(self, project_id: str, name: str) -> NeonBranch | None:
        return next((b for b in self.branches(project_id) if b.name == name), None)

    def create_branch_at(self, project_id: str, parent_id: str, name: str,
                         parent_timestamp: str, timeout: float = 600) -> NeonBranch:
        """A branch of ``parent_id`` as it was at ``parent_timestamp``, WITH a read_write
        compute: Neon gives a branch none unless ``endpoints`` asks (createProjectBranch).
        Waits until the compute runs."""
        answer = self.request("POST", f"/projects/{project_id}/branches", json={
            "branch": {"parent_id": parent_id, "name": name,
                       "parent_timestamp": parent_timestamp},
            "endpoints": [{"type": "read_write"}]})
        self.wait_operations(project_id, answer, f"Neon to make branch {name} at "
                             f"{parent_timestamp} with its compute", timeout)
        return NeonBranch.from_api(answer["branch"])

    def delete_branch(self, project_id: str, branch_id: str, timeout: float = 120) -> None:
        answer = self.request("DELETE", f"/projects/{project_id}/branches/{branch_id}")
        self.wait_operations(project_id, answer, f"Neon to delete branch {branch_id}", timeout)

    def restore_branch(self, project_id: str, branch_id: str, source_timestamp: str,
                       preserve_under_name: str, timeout: float = 900) -> None:
        """Restore ``branch_id`` in place to its own state at ``source_timestamp``, the state
        before kept as branch ``preserve_under_name`` (restoreProjectBranch,
        https://neon.com/docs/reference/api/branches/restore-project-branch). The branch's
        connection strings stay; open connections are cut. Waits for the operations."""
        answer = self.request("POST", f"/projects/{project_id}/branches/{branch_id}/restore",
                              json={"source_branch_id": branch_id,
                                    "source_timestamp": source_timestamp,
                                    "preserve_under_name": preserve_under_name})
        self.wait_operations(project_id, answer, f"Neon to restore branch {branch_id} to "
                             f"{source_timestamp}", timeout)

    # ------------------------------------------------------------ roles
    # A branch's Postgres roles (Neon API v2, createProjectBranchRole and the calls beside it:
    # https://api-docs.neon.tech/reference/createprojectbranchrole). A password comes back
    # only in the answer that makes it (create, reset_password): it is a Secret at once.

    def _roles(self, project_id: str, branch_id: str) -> str:
        return f"/projects/{project_id}/branches/{branch_id}/roles"

    def roles(self, project_id: str, branch_id: str) -> list[str]:
        """The names of the branch's roles."""
        answer = self.request("GET", self._roles(project_id, branch_id))
        return [str(r["name"]) for r in answer.get("roles") or []]

    def get_role(self, project_id: str, branch_id: str, name: str) -> dict[str, Any] | None:
        """The role (without a password), or None when the branch has no such role."""
        try:
            return self.request("GET", f"{self._roles(project_id, branch_id)}/"
                                f"{quote(name, safe='')}")["role"]
        except ProviderError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise

    def create_role(self, project_id: str, branch_id: str, name: str,
                    timeout: float = 120) -> Secret:
        """A login role (on Neon: a member of neon_superuser, CREATEROLE, never SUPERUSER);
        its generated password, shown once. Waits for the operations."""
        answer = self.request("POST", self._roles(project_id, branch_id),
                              json={"role": {"name": name}})
        password = Secret(f"db role {name}", str(answer["role"]["password"]))
        self.wait_operations(project_id, answer, f"Neon to create role {name}", timeout)
        return password

    def reset_role_password(self, project_id: str, branch_id: str, name: str,
                            timeout: float = 120) -> Secret:
        """A new generated password for ``name``; the old one is refused at once
        (resetProjectBranchRolePassword,
        https://neon.com/docs/reference/api/branches/reset-project-branch-role-password.md).
        Waits for the operations."""
        answer = self.request("POST", f"{self._roles(project_id, branch_id)}/"
                              f"{quote(name, safe='')}/reset_password")
        password = Secret(f"db role {name}", str(answer["role"]["password"]))
        self.wait_operations(project_id, answer, f"Neon to reset the password of {name}",
                             timeout)
        return password

    def delete_role(self, project_id: str, branch_id: str, name: str,
                    timeout: float = 120) -> None:
        answer = self.request("DELETE", f"{self._roles(project_id, branch_id)}/"
                              f"{quote(name, safe='')}")
        self.wait_operations(project_id, answer, f"Neon to delete role {name}", timeout)

    def connection_uri(self, project_id: str, branch_id: str, database: str, role: str,
                       pooled: bool = False) -> Secret:
        """The branch's connection URI; it holds the role's password, so it is a Secret."""
        answer = self.request("GET", f"/projects/{project_id}/connection_uri", params={
            "branch_id": branch_id, "database_name": database, "role_name": role,
            "pooled": "true" if pooled else "false"})
        return Secret("db_password", str(answer["uri"]))


@dataclass(frozen=True)
class NeonBranch:
    id: str
    name: str
    current_state: str
    default: bool
    created_at: str
    parent_timestamp: str | None

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> NeonBranch:
        return cls(id=str(raw["id"]), name=str(raw.get("name") or raw["id"]),
                   current_state=str(raw.get("current_state") or ""),
                   default=bool(raw.get("default") or raw.get("primary")),
                   created_at=str(raw.get("created_at") or ""),
                   parent_timestamp=raw.get("parent_timestamp"))
