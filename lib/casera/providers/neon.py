"""The Neon HTTP API v2. Neon's own Python client (``neon-api``) lacks calls the runbooks need
(branch restore), so this is a thin ``requests`` wrapper with Neon's error shape kept."""

from __future__ import annotations

from typing import Any

import requests

from casera.errors import ProviderError
from casera.operator_secrets import Secret


class NeonClient:
    def __init__(self, api_endpoint: str, api_key: Secret, timeout: float = 10.0) -> None:
        self._base = api_endpoint.rstrip("/")
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {api_key.reveal()}"
        self._session.headers["Accept"] = "application/json"
        self._timeout = timeout

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._session.request(method, self._base + path, timeout=self._timeout,
                                         **kwargs)
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

    def update_project(self, project_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """PATCH the project; the answer holds the project and the operations it started."""
        return self.request("PATCH", f"/projects/{project_id}", json={"project": changes})

    def get_operation(self, project_id: str, operation_id: str) -> dict[str, Any]:
        return self.request("GET", f"/projects/{project_id}/operations/{operation_id}"
                            )["operation"]
