"""The Hetzner load balancer in front of the api, when params turn it on.

Targets are the cluster label (new servers join by themselves); each service forwards TCP to
the api's published port and health-checks ``/readyz``, so a node whose api cannot reach the
database or Redis stops receiving traffic.
"""

from __future__ import annotations

import urllib.request

from hcloud.load_balancer_types import LoadBalancerType
from hcloud.load_balancers import (
    LoadBalancerHealtCheckHttp,
    LoadBalancerHealthCheck,
    LoadBalancerService,
    LoadBalancerTarget,
    LoadBalancerTargetLabelSelector,
)
from hcloud.locations import Location

from casera.context import RunContext
from casera.progress import wait_for
from casera.result import StepResult, timed
from casera.steps.compute import hcloud_client

HEALTH_PATH = "/readyz"


def _service(listen_port: int, destination_port: int) -> LoadBalancerService:
    return LoadBalancerService(
        protocol="tcp", listen_port=listen_port, destination_port=destination_port,
        proxyprotocol=False,
        health_check=LoadBalancerHealthCheck(
            protocol="http", port=destination_port, interval=10, timeout=5, retries=3,
            http=LoadBalancerHealtCheckHttp(path=HEALTH_PATH, status_codes=["2??"], tls=False)))


def ensure_load_balancer(ctx: RunContext) -> StepResult:
    lb_params = ctx.params.load_balancer
    with timed(StepResult("load balancer", lb_params.name, dry_run=ctx.dry_run)) as result:
        if not lb_params.enabled:
            result.reason = f"off in params/{ctx.env}.yaml (load_balancer.enabled: false)"
            return result
        api = hcloud_client(ctx)
        found = api.load_balancers.get_by_name(lb_params.name)
        selector = ctx.params.cluster_label
        wanted = {(s.listen_port, s.destination_port) for s in lb_params.services}
        if found is None:
            result.changed = 1 + len(wanted) + 1
            result.diff = [f"+ load balancer {lb_params.name} ({lb_params.type}, "
                           f"{ctx.params.hetzner.location})", f"+ targets: label {selector}"]
            result.diff += [f"+ tcp {lp} -> {dp}, health GET {HEALTH_PATH}"
                            for lp, dp in sorted(wanted)]
            if ctx.dry_run:
                return result
            response = api.load_balancers.create(
                name=lb_params.name, load_balancer_type=LoadBalancerType(name=lb_params.type),
                location=Location(name=ctx.params.hetzner.location),
                services=[_service(lp, dp) for lp, dp in sorted(wanted)],
                targets=[LoadBalancerTarget(type="label_selector", label_selector=(
                    LoadBalancerTargetLabelSelector(selector=selector)))],
                labels=dict(ctx.params.hetzner.labels))
            response.action.wait_until_finished()
        else:
            have = {(s.listen_port, s.destination_port): s for s in found.services or []}
            targets = {t.label_selector.selector for t in found.targets or []
                       if t.type == "label_selector" and t.label_selector}
            add = sorted(wanted - set(have))
            remove = sorted(set(have) - wanted)
            result.diff += [f"+ tcp {lp} -> {dp}" for lp, dp in add]
            result.diff += [f"- tcp {lp} -> {dp}" for lp, dp in remove]
            if selector not in targets:
                result.diff.append(f"+ targets: label {selector}")
            result.changed = len(add) + len(remove) + (selector not in targets)
            if not result.changed:
                result.reason = "services and targets as params say"
            if not ctx.dry_run:
                for lp, dp in add:
                    found.add_service(_service(lp, dp)).wait_until_finished()
                for key in remove:
                    found.delete_service(have[key]).wait_until_finished()
                if selector not in targets:
                    found.add_target(LoadBalancerTarget(
                        type="label_selector", label_selector=LoadBalancerTargetLabelSelector(
                            selector=selector))).wait_until_finished()
        if ctx.dry_run:
            return result
        lb = api.load_balancers.get_by_name(lb_params.name)
        ip = lb.public_net.ipv4.ip
        for listen_port, _ in sorted(wanted):
            url = f"http://{ip}:{listen_port}{HEALTH_PATH}"
            body = wait_for(f"{url} to answer through the load balancer",
                            lambda u=url: _get(u), 180)
            result.check(f"GET {HEALTH_PATH} via LB :{listen_port}", True, body[:80])
    return result


def _get(url: str) -> str | None:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode(errors="replace") if response.status == 200 else None


def public_address(ctx: RunContext) -> str | None:
    """Where public traffic enters: the LB's address, or the first server's without an LB;
    None when neither exists yet (a dry run on a fresh environment)."""
    api = hcloud_client(ctx)
    if ctx.params.load_balancer.enabled:
        lb = api.load_balancers.get_by_name(ctx.params.load_balancer.name)
        if lb and lb.public_net and lb.public_net.ipv4:
            return lb.public_net.ipv4.ip
    first = api.servers.get_by_name(ctx.params.server_names()[0])
    if first is None or not first.public_net.ipv4:
        return None
    return first.public_net.ipv4.ip
