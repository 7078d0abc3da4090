"""The closing table of a run: what exists, what this run changed, and what it costs per
month at the provider's live prices next to the seed's estimate."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

from casera.context import RunContext
from casera.result import JOURNAL_ENV, StepResult, timed
from casera.steps.compute import hcloud_client

# casera-infrastructure-plan.txt: 3 x CX33 at $6.59/mo = $19.77, the LB at $5.99/mo.
SEED_NODE_MONTHLY = Decimal("6.59")
SEED_LB_MONTHLY = Decimal("5.99")


def _monthly(prices: list[dict], location: str) -> Decimal | None:
    for price in prices:
        if price.get("location") == location:
            return Decimal(str(price["price_monthly"]["gross"]))
    return None


def monthly_cost(ctx: RunContext) -> StepResult:
    """Live gross monthly prices of the servers and LB this env has, next to the seed."""
    p = ctx.params
    with timed(StepResult("monthly cost", p.hetzner.location, dry_run=ctx.dry_run)) as result:
        api = hcloud_client(ctx)
        servers = api.servers.get_all(label_selector=p.cluster_label)
        node_price = _monthly(api.server_types.get_by_name(p.hetzner.server_type).prices,
                              p.hetzner.location)
        nodes = Decimal(len(servers)) * (node_price or Decimal(0))
        seed_nodes = SEED_NODE_MONTHLY * p.hetzner.server_count
        result.check(f"{len(servers)} x {p.hetzner.server_type}", node_price is not None,
                     f"{nodes:.2f}/mo live ({node_price or 0:.2f}/mo each) vs seed "
                     f"{seed_nodes:.2f}/mo")
        lb = api.load_balancers.get_by_name(p.load_balancer.name) \
            if p.load_balancer.enabled else None
        lb_price = Decimal(0)
        if lb is not None:
            found = _monthly(api.load_balancer_types.get_by_name(p.load_balancer.type).prices,
                             p.hetzner.location)
            lb_price = found or Decimal(0)
            result.check(f"load balancer {p.load_balancer.type}", found is not None,
                         f"{lb_price:.2f}/mo live vs seed {SEED_LB_MONTHLY:.2f}/mo")
        total = nodes + lb_price
        seed = seed_nodes + (SEED_LB_MONTHLY if lb is not None else 0)
        result.check("Hetzner total", True, f"{total:.2f}/mo live (gross) vs seed {seed:.2f}/mo;"
                     " Neon, B2 and Cloudflare are usage-based and not included")
    return result


def run_changes() -> StepResult:
    """Every step of this run so far and what it changed, from the run journal."""
    result = StepResult("this run", "all steps")
    path = os.environ.get(JOURNAL_ENV)
    records = [json.loads(line) for line in Path(path).read_text().splitlines()
               if line.strip()] if path and Path(path).exists() else []
    for record in records:
        changed = int(record.get("changed", 0))
        result.check(f"{record['step']} {record['target']}", bool(record.get("ok", True)),
                     f"{changed} change(s)" + (f" ({record['reason']})"
                                               if record.get("reason") else "")
                     + f", {record.get('duration_s', 0):.1f} s")
        result.changed += changed
    result.reason = f"{len(records)} steps" if records else "no journal (interactive session)"
    return result


def inventory(ctx: RunContext) -> StepResult:
    """What exists now: servers with their addresses and Swarm roles, services with their
    replicas, buckets, application keys by name (never their secrets), the DNS record."""
    from contextlib import ExitStack

    from casera.providers import b2, cloudflare, docker_swarm
    from casera.steps import dns, stack, storage, swarm

    p = ctx.params
    with timed(StepResult("inventory", f"env {ctx.env}", dry_run=ctx.dry_run)) as result, \
            ExitStack() as exits:
        api = hcloud_client(ctx)
        servers = {s.name: s for s in api.servers.get_all(label_selector=p.cluster_label)}
        roles: dict[str, str] = {}
        services: dict[str, Any] = {}
        try:
            manager = swarm.manager_client(ctx, exits)
            for entry in docker_swarm.nodes(manager):
                roles[entry["hostname"]] = (f"{entry['role']}, {entry['state']}"
                                            + (", leader" if entry["leader"] else ""))
            services = stack.stack_services(manager)
        except Exception as exc:  # noqa: BLE001 - an inventory reports what it cannot see
            result.diff.append(f"  swarm not readable: {type(exc).__name__}: {exc}")
        for name in p.server_names():
            server = servers.get(name)
            ip = server.public_net.ipv4.ip if server and server.public_net.ipv4 else "-"
            result.check(f"server {name}", server is not None and server.status == "running",
                         f"{server.status if server else 'missing'}, {ip}, "
                         f"{roles.get(name, 'not in the swarm')}")
        for name, service in sorted(services.items()):
            spec = service.attrs["Spec"]
            wanted = spec.get("Mode", {}).get("Replicated", {}).get("Replicas", "-")
            running = sum(1 for t in service.tasks(filters={"desired-state": "running"})
                          if t["Status"]["State"] == "running")
            image = spec["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]
            result.check(f"service {name}", running == wanted,
                         f"{running}/{wanted} running, {image}")
        b2_api = storage.master_api(ctx)
        for bucket in p.b2.buckets.values():
            found = b2.get_bucket(b2_api, bucket.name)
            result.check(f"bucket {bucket.name}", found is not None,
                         found.bucket_type if found else "missing")
        keys = {k.name for k in b2.list_keys(b2_api)}
        for kp in p.b2.keys:
            result.check(f"b2 key {kp.name}", kp.name in keys,
                         f"{', '.join(kp.capabilities)} on {p.b2.buckets[kp.bucket].name}")
        cf = dns.cloudflare_client(ctx)
        zone_id = cloudflare.find_zone_id(cf, p.cloudflare.zone)
        records = cloudflare.list_records(cf, zone_id, dns.record_name(p)) if zone_id else []
        result.check(f"dns {dns.record_name(p)}", bool(records),
                     "; ".join(f"{r.type} {r.content}" for r in records) or "missing")
    return result
