"""The Hetzner load balancer in front of the api, when params turn it on.

Targets are the cluster label (new servers join by themselves); each service forwards TCP to
the api's published port and health-checks ``/readyz``, so a node whose api cannot reach the
database or Redis stops receiving traffic.
"""

from __future__ import annotations

import urllib.request

from casera.context import RunContext
from casera.errors import WaitTimeout
from casera.plan import Plan, apply
from casera.progress import wait_for
from casera.providers import hetzner
from casera.providers.hetzner import LBService
from casera.result import StepResult, timed

HEALTH_PATH = "/readyz"
WAIT_S = 300.0


def ensure_load_balancer(ctx: RunContext) -> StepResult:
    lb_params = ctx.params.load_balancer
    with timed(StepResult("load balancer", lb_params.name, dry_run=ctx.dry_run)) as result:
        if not lb_params.enabled:
            result.reason = f"off in params/{ctx.env}.yaml (load_balancer.enabled: false)"
            return result
        hz = hetzner.for_env(ctx.params, ctx.secrets)
        found = hz.load_balancers.get(lb_params.name)
        selector = ctx.params.cluster_label
        wanted = sorted({(s.listen_port, s.destination_port) for s in lb_params.services})
        services = [LBService(lp, dp, HEALTH_PATH) for lp, dp in wanted]
        plan = Plan(gate_title=f"Load balancer {lb_params.name}: delete service(s)")
        if found is None:
            plan.add(f"+ load balancer {lb_params.name} ({lb_params.type}, "
                     f"{ctx.params.hetzner.location})",
                     lambda: hz.load_balancers.create_or_get(
                         lb_params.name, lb_params.type, ctx.params.hetzner.location, services,
                         selector, dict(ctx.params.hetzner.labels))[1])
            plan.add(f"+ targets: label {selector}")  # made with it
            for lp, dp in wanted:
                plan.add(f"+ tcp {lp} -> {dp}, health GET {HEALTH_PATH}")
        else:
            have = {(s.listen_port, s.destination_port) for s in found.services}
            for service in services:
                if (service.listen_port, service.destination_port) not in have:
                    plan.add(f"+ tcp {service.listen_port} -> {service.destination_port}",
                             lambda s=service: [hz.load_balancers.add_service(found, s)])
            for lp, dp in sorted(have - set(wanted)):
                # Deleting a service stops the traffic on its port: asked at the gate.
                plan.add(f"- tcp {lp} -> {dp}",
                         lambda lp=lp: [hz.load_balancers.delete_service(found, lp)],
                         destructive=True)
            if selector not in found.target_labels:
                plan.add(f"+ targets: label {selector}",
                         lambda: [hz.load_balancers.add_label_target(found, selector)])
            if not plan:
                result.reason = "services and targets as params say"
        applied = apply(ctx, result, plan)
        if applied.dry_run:
            return result
        hetzner.wait_for([a for actions in applied.made for a in actions],
                         f"load balancer {lb_params.name}", WAIT_S)
        lb = hz.load_balancers.get(lb_params.name)
        ip = lb.ipv4 if lb else None
        if not result.check("public IPv4", ip is not None,
                            ip or f"load balancer {lb_params.name} has no public IPv4"):
            return result
        for listen_port, _ in wanted:
            url = f"http://{ip}:{listen_port}{HEALTH_PATH}"
            body: str | None = None
            try:
                body = wait_for(f"{url} to answer through the load balancer",
                                lambda u=url: _get(u), 180)
                detail = (body or "")[:80]
            except WaitTimeout as exc:
                # No 200 through the LB in time: red, with the last answer it gave.
                detail = str(exc)[:160]
            result.check(f"GET {HEALTH_PATH} via LB :{listen_port}", body is not None, detail)
    return result


def _get(url: str) -> str | None:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode(errors="replace") if response.status == 200 else None


def public_address(ctx: RunContext) -> str | None:
    """Where public traffic enters: the LB's address, or the first server's without an LB;
    None when neither exists yet (a dry run on a fresh environment)."""
    hz = hetzner.for_env(ctx.params, ctx.secrets)
    if ctx.params.load_balancer.enabled:
        lb = hz.load_balancers.get(ctx.params.load_balancer.name)
        if lb is not None and lb.ipv4:
            return lb.ipv4
    first = hz.servers.get(ctx.params.server_names()[0])
    return first.ipv4 if first is not None else None
