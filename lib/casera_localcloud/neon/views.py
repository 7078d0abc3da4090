"""How the local Neon's objects look in API answers, shaped after Neon's API v2 schemas."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from casera_localcloud.neon.config import DOMAIN, MAIN_BRANCH_ID, NeonConfig
from casera_localcloud.neon.instances import branch_pooler, main_pooler


def project_view(project: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in project.items() if k != "plan"}
    view.update({
        "platform_id": "local",
        "provisioner": "k8s-neonvm",
        "proxy_host": DOMAIN,
        "store_passwords": True,
        # Neon reports the account's plan on the project as owner.subscription_type.
        "owner": {"name": "casera local", "subscription_type": project["plan"]},
    })
    return view


def endpoint_id(branch: dict[str, Any]) -> str:
    return str(branch["endpoint_id"])


def endpoint_view(project_id: str, branch: dict[str, Any]) -> dict[str, Any]:
    active = branch["current_state"] == "ready"
    return {
        "id": endpoint_id(branch),
        "host": f"{endpoint_id(branch)}.{DOMAIN}",
        "project_id": project_id,
        "branch_id": branch["id"],
        "type": "read_write",
        "current_state": "active" if active else "init",
        "pooler_enabled": True,
        "pooler_mode": "transaction",
        "proxy_host": DOMAIN,
        "region_id": "local",
        "created_at": branch["created_at"],
        "updated_at": branch["updated_at"],
    }


def branch_view(project_id: str, branch: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": branch["id"],
        "project_id": project_id,
        "parent_id": branch["parent_id"],
        "parent_timestamp": branch["parent_timestamp"],
        "name": branch["name"],
        "current_state": branch["current_state"],
        "default": branch.get("default", False),
        "primary": branch.get("default", False),
        "protected": branch.get("protected", False),
        "creation_source": "console",
        "created_at": branch["created_at"],
        "updated_at": branch["updated_at"],
    }


def ports_of(cfg: NeonConfig, branch: dict[str, Any]) -> tuple[int, int]:
    """(direct, pooled) port of a branch's endpoint."""
    if branch["id"] == MAIN_BRANCH_ID:
        return cfg.pg_port, main_pooler(cfg).port
    pooler = branch_pooler(cfg, branch["id"], branch["slot"])
    return pooler.compute.port, pooler.port


def connection_uri(cfg: NeonConfig, branch: dict[str, Any], database: str, role: str,
                   password: str, pooled: bool) -> str:
    direct_port, pooled_port = ports_of(cfg, branch)
    host = endpoint_id(branch) + ("-pooler" if pooled else "") + f".{DOMAIN}"
    port = pooled_port if pooled else direct_port
    # The endpoint names resolve nowhere: hostaddr says where to connect, the name stays
    # for TLS verification (verify-full with the local CA).
    return (f"postgresql://{quote(role)}:{quote(password, safe='')}@{host}:{port}/"
            f"{quote(database)}?sslmode=require&hostaddr={cfg.client_hostaddr}")
