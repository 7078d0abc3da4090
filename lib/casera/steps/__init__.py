"""Idempotent steps: ``ensure_*`` makes a thing so, ``verify_*`` checks it; each returns a
:class:`casera.result.StepResult` and honours ``ctx.dry_run``.

Runbooks do ``from casera import steps`` and call ``steps.<module>.<step>(ctx)``: the module
says which system a step touches.
"""

from casera.steps import (
    access,
    api_endpoint,
    database,
    dns,
    edge,
    firewall,
    health,
    load_balancer,
    preflight,
    redis_standby,
    servers,
    ssh_key,
    stack,
    storage,
    summary,
    swarm,
    swarm_secrets,
)

__all__ = ["access", "api_endpoint", "database", "dns", "edge", "firewall", "health",
           "load_balancer", "preflight", "redis_standby", "servers", "ssh_key", "stack",
           "storage", "summary", "swarm", "swarm_secrets"]
