"""Errors the emulator answers with, in Hetzner's shape.

Handlers raise ``ApiError``; the HTTP layer turns it into
``{"error": {"code", "message", "details"}}`` with the status Hetzner uses for that code, so
hcloud-python raises the same ``APIException`` it would against the real API.
"""

from __future__ import annotations

from typing import Any

# Status codes as documented by Hetzner for each error code.
STATUS_BY_CODE = {
    "invalid_input": 400,
    "json_error": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "uniqueness_error": 409,
    # 422: the one place the API reference documents it, DELETE /firewalls/{id} ("Firewall
    # still applied to a resource", data/hcloud-openapi.json).
    "resource_in_use": 422,
    "locked": 423,
    "resource_limit_exceeded": 403,
    "rate_limit_exceeded": 429,
    "server_error": 500,
    "unavailable": 503,
    "firewall_already_applied": 422,
    "firewall_already_removed": 422,
    "firewall_resource_not_found": 422,
    "target_already_defined": 422,
    "source_port_already_used": 422,
}


class ApiError(Exception):
    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None,
                 status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message
        self.details = details if details is not None else {}
        self.status = status or STATUS_BY_CODE.get(code, 400)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def not_found(kind: str, ident: object) -> ApiError:
    return ApiError("not_found", f"{kind} with ID {ident} not found")


def invalid_field(field: str, message: str) -> ApiError:
    # Hetzner lists the offending fields in details so clients can point at them.
    return ApiError("invalid_input", f"invalid input in field '{field}'",
                    {"fields": [{"name": field, "messages": [message]}]})


def uniqueness(field: str = "name") -> ApiError:
    return ApiError("uniqueness_error", f"{field} is already used",
                    {"fields": [{"name": field}]})
