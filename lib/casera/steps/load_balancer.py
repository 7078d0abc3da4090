"""The Hetzner load balancer in front of the api, when params turn it on.

Targets are the cluster label (new servers join by themselves); each service forwards to
the api's published port and health-checks ``/readyz``, so a node whose api cannot reach the
database or Redis stops receiving traffic. With ``params.edge`` the LB ends TLS on 443 with
the origin certificate (``steps.edge``) and port 80 only redirects to it; the api's URL and
the CA to trust for it come from :mod:`casera.steps.api_endpoint`.
"""

from __future__ import annotations

from casera.context import RunContext
from casera.errors import StepFailed, WaitTimeout
from casera.plan import Plan, apply
from casera.progress import wait_for
from casera.providers import hetzner
from casera.providers.hetzner import LBService
from casera.result import StepResult, timed
from casera.steps.api_endpoint import ApiEndpoint, api_endpoint_for

HEALTH_PATH = "/readyz"
WAIT_S = 300.0


def desired_services(ctx: RunContext, hz: hetzner.Hetzner) -> tuple[list[LBService], str | None]:
    """The LB's services from params: the tcp ones of ``load_balancer.services`` and, with the
    edge on, HTTPS on ``edge.https_listen_port`` with the origin certificate, port 80
    redirecting to it, health checks as ``edge.health_check`` says. Also the certificate's
    name when it does not exist yet (a dry run on a fresh environment)."""
    p = ctx.params
    check = p.edge.health_check if p.edge else None
    timing = {"health_interval": check.interval_s, "health_timeout": check.timeout_s,
              "health_retries": check.retries} if check else {}
    path = check.path if check else HEALTH_PATH
    services = [LBService(lp, dp, path, **timing) for lp, dp in sorted(
        {(s.listen_port, s.destination_port) for s in p.load_balancer.services})]
    pending = None
    if p.edge is not None:
        from casera.steps.edge import certificate_name

        name = certificate_name(p)
        cert = hz.certificates.get(name)
        if cert is None:
            if not ctx.dry_run:
                raise StepFailed(f"certificate {name} is not in the Hetzner project: run the "
                                 "origin certificate step first")
            pending = name
        services.append(LBService(p.edge.https_listen_port, p.swarm.api_published_port, path,
                                  "https", (cert.id,) if cert else (), True, **timing))
    return services, pending


def ensure_load_balancer(ctx: RunContext) -> StepResult:
    lb_params = ctx.params.load_balancer
    with timed(StepResult("load balancer", lb_params.name, dry_run=ctx.dry_run)) as result:
        if not lb_params.enabled:
            result.reason = f"off in params/{ctx.env}.yaml (load_balancer.enabled: false)"
            return result
        hz = hetzner.for_env(ctx.params, ctx.secrets)
        found = hz.load_balancers.get(lb_params.name)
        selector = ctx.params.cluster_label
        services, pending = desired_services(ctx, hz)

        def shown(service: LBService) -> str:
            if pending and service.protocol == "https":
                return service.describe() + f" (certificate {pending}: known after apply)"
            return service.describe()

        plan = Plan(gate_title=f"Load balancer {lb_params.name}: delete service(s)")
        if found is None:
            plan.add(f"+ load balancer {lb_params.name} ({lb_params.type}, "
                     f"{ctx.params.hetzner.location})",
                     lambda: hz.load_balancers.create_or_get(
                         lb_params.name, lb_params.type, ctx.params.hetzner.location, services,
                         selector, dict(ctx.params.hetzner.labels))[1])
            plan.add(f"+ targets: label {selector}")  # made with it
            for service in services:
                plan.add(f"+ {shown(service)}")
        else:
            have = {s.listen_port: s for s in found.services}
            want = {s.listen_port: s for s in services}
            # Deletions first: an https service's redirect needs port 80 free.
            for port in sorted(set(have) - set(want)):
                # Deleting a service stops the traffic on its port: asked at the gate.
                plan.add(f"- {have[port].describe()}",
                         lambda lp=port: [hz.load_balancers.delete_service(found, lp)],
                         destructive=True)
            for port, service in sorted(want.items()):
                if port not in have:
                    plan.add(f"+ {shown(service)}",
                             lambda s=service: [hz.load_balancers.add_service(found, s)])
                elif have[port] != service:
                    plan.add(f"~ {have[port].describe()}  =>  {shown(service)}",
                             lambda s=service: [hz.load_balancers.update_service(found, s)])
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
        assert ip is not None
        endpoint = api_endpoint_for(ctx.params, ip)
        path = ctx.params.edge.health_check.path if ctx.params.edge else HEALTH_PATH
        body: str | None = None
        try:
            body = wait_for(f"{endpoint.url(path)} to answer through the load balancer",
                            lambda: _get(endpoint, path), 180)
            detail = (body or "")[:80]
        except WaitTimeout as exc:
            # No 200 through the LB in time: red, with the last answer it gave.
            detail = str(exc)[:160]
        result.check(f"GET {path} via LB :{endpoint.port}", body is not None, detail)
    return result


def _get(endpoint: ApiEndpoint, path: str) -> str | None:
    status, body = endpoint.get(path)
    return body if status == 200 else None


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


def wait_readyz_through_lb(ctx: RunContext, timeout: float, checks: str) -> str:
    """Wait for the api's /readyz green through the load balancer, as users reach it: the
    firewall keeps the nodes' api port for the LB alone (origin lock-down), so "green" means
    green for a client. ``checks`` names what /readyz depends on here, for the wait's message.
    Returns the base URL that answered."""
    address = public_address(ctx)
    if address is None:
        raise StepFailed("no load balancer or server address to reach the api through")
    endpoint = api_endpoint_for(ctx.params, address)

    def ready() -> str | None:
        try:
            status, _ = endpoint.get("/readyz")
        except OSError:
            return None
        return endpoint.base_url if status == 200 else None

    return str(wait_for(f"the api's /readyz green through the LB {endpoint.base_url} "
                        f"(it checks {checks})", ready, timeout))
