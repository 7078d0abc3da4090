"""The closing table of a run: what exists, what this run changed, and what it costs per
month at the provider's live prices next to the seed's estimate."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from casera.context import RunContext
from casera.providers import hetzner
from casera.result import JOURNAL_ENV, StepResult, timed


@dataclass(frozen=True)
class SeedEstimate:
    """The seed plan's Hetzner figures, kept here only: infrastructure plan
    (February 2026), "Swarm Nodes" ($6.59/mo per CX33) and "At Scale" (Hetzner LB $5.99/mo),
    in US dollars, with no word on VAT."""

    currency: str = "USD"
    server_type: str = "cx33"
    node_monthly: Decimal = Decimal("6.59")
    nodes: int = 3
    load_balancer_monthly: Decimal = Decimal("5.99")


SEED = SeedEstimate()


def _location_price(prices: list[dict[str, Any]], location: str) -> dict[str, Any] | None:
    return next((price for price in prices if price.get("location") == location), None)


def _monthly(entry: dict[str, Any] | None) -> tuple[Decimal, Decimal] | None:
    if entry is None:
        return None
    monthly = entry["price_monthly"]
    return Decimal(str(monthly["net"])), Decimal(str(monthly["gross"]))


def monthly_price(pricing: dict[str, Any], kind: str, type_name: str,
                  location: str) -> tuple[Decimal, Decimal] | None:
    """(net, gross) a month of one ``kind`` ("server_types", "load_balancer_types") of
    ``type_name`` at ``location``, from Hetzner's GET /pricing; None when it lists none."""
    prices = {t["name"]: t["prices"] for t in pricing[kind]}
    return _monthly(_location_price(prices.get(type_name, []), location))


def _versus_seed(live_net: Decimal, currency: str, seed: Decimal) -> str:
    """The difference to the seed's figure, when there is one to take: the seed quotes
    dollars, and no exchange rate is assumed here."""
    delta = live_net - seed
    share = f", {delta / seed:+.1%}" if seed else ""
    if currency != SEED.currency:
        # Shown as quoted, never converted: an exchange rate would be a typed-in figure.
        return (f"seed {seed:.2f} {SEED.currency}, difference {delta:+.2f}{share} in figures "
                f"as quoted ({currency} vs {SEED.currency}: no exchange rate assumed)")
    return f"seed {seed:.2f} {SEED.currency}, difference {delta:+.2f}{share}"


def monthly_cost(ctx: RunContext) -> StepResult:
    """Live monthly prices (GET /pricing, the project's currency, net and gross) of the
    servers and load balancer this env has, each next to the seed's figure."""
    p = ctx.params
    with timed(StepResult("monthly cost", p.hetzner.location, dry_run=ctx.dry_run)) as result:
        hz = hetzner.for_env(p, ctx.secrets)
        pricing = hz.catalog.pricing()
        currency = str(pricing["currency"])
        result.note("currency", f"{currency} (the API's; VAT {pricing['vat_rate']} % in gross)")
        servers = hz.servers.list(p.cluster_label)
        # Price what exists, by its own type and location, not what the params ask for.
        total_net = total_gross = Decimal(0)
        by_kind: dict[tuple[str, str], int] = {}
        for server in servers:
            key = (server.server_type, server.location or p.hetzner.location)
            by_kind[key] = by_kind.get(key, 0) + 1
        server_prices = {st["name"]: st["prices"] for st in pricing["server_types"]}
        for (type_name, location), count in sorted(by_kind.items()):
            price = _monthly(_location_price(server_prices.get(type_name, []), location))
            label = f"{count} x {type_name} in {location}"
            if not result.check(label, price is not None,
                                f"the API lists no price for {type_name} in {location}"
                                if price is None else
                                f"{price[0]:.2f} net / {price[1]:.2f} gross {currency} each, "
                                f"{count * price[0]:.2f} net a month; "
                                + _versus_seed(count * price[0], currency,
                                               SEED.node_monthly * count)):
                continue
            assert price is not None
            total_net += count * price[0]
            total_gross += count * price[1]
        lb = hz.load_balancers.get(p.load_balancer.name) if p.load_balancer.enabled else None
        if lb is not None:
            lb_prices = {lt["name"]: lt["prices"] for lt in pricing["load_balancer_types"]}
            lb_type, lb_location = lb.type, lb.location
            price = _monthly(_location_price(lb_prices.get(lb_type, []), lb_location))
            if result.check(f"load balancer {lb_type} in {lb_location}", price is not None,
                            f"the API lists no price for {lb_type} in {lb_location}"
                            if price is None else
                            f"{price[0]:.2f} net / {price[1]:.2f} gross {currency}; "
                            + _versus_seed(price[0], currency, SEED.load_balancer_monthly)):
                assert price is not None
                total_net += price[0]
                total_gross += price[1]
        seed_total = SEED.node_monthly * len(servers) + (
            SEED.load_balancer_monthly if lb is not None else 0)
        result.note("Hetzner total", f"{total_net:.2f} net / {total_gross:.2f} gross {currency} "
                    f"a month; " + _versus_seed(total_net, currency, seed_total)
                    + "; Neon, B2 and Cloudflare are usage-based and not included")
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
        # After a real run a missing piece is red. A dry run changed nothing, so on a cloud not
        # built yet the same findings are information: the plan above says what would be made.
        def report(name: str, ok: bool, detail: str) -> None:
            if ctx.dry_run:
                result.note(name, detail if ok else f"not there yet (dry run): {detail}")
            else:
                result.check(name, ok, detail)

        servers = {s.name: s for s in
                   hetzner.for_env(p, ctx.secrets).servers.list(p.cluster_label)}
        roles: dict[str, str] = {}
        services: dict[str, Any] = {}
        running_now: dict[str, list[Any]] = {}
        try:
            manager = swarm.manager_client(ctx, exits)
            for entry in docker_swarm.nodes(manager):
                roles[entry["hostname"]] = (f"{entry['role']}, {entry['state']}"
                                            + (", leader" if entry["leader"] else ""))
            running_now = stack.running_tasks(manager)
            services = stack.stack_services(manager)
        except Exception as exc:  # noqa: BLE001 - an inventory reports what it cannot see
            result.diff.append(f"  swarm not readable: {type(exc).__name__}: {exc}")
        for name in p.server_names():
            server = servers.get(name)
            ip = (server.ipv4 if server else None) or "-"
            report(f"server {name}", server is not None and server.status == "running",
                         f"{server.status if server else 'missing'}, {ip}, "
                         f"{roles.get(name, 'not in the swarm')}")
        for name, service in sorted(services.items()):
            spec = service["spec"]
            wanted = spec.get("Mode", {}).get("Replicated", {}).get("Replicas", "-")
            running = len(running_now.get(service["id"], []))
            image = spec["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]
            report(f"service {name}", running == wanted,
                         f"{running}/{wanted} running, {image}")
        b2_api = storage.master_api(ctx)
        for bucket in p.b2.buckets.values():
            found = b2.get_bucket(b2_api, bucket.name)
            report(f"bucket {bucket.name}", found is not None,
                         found.bucket_type if found else "missing")
        keys = {k.name for k in b2.list_keys(b2_api)}
        for kp in p.b2.keys:
            report(f"b2 key {kp.name}", kp.name in keys,
                         f"{', '.join(kp.capabilities)} on {p.b2.buckets[kp.bucket].name}")
        cf = dns.cloudflare_client(ctx)
        zone_id = cloudflare.find_zone_id(cf, p.cloudflare.zone)
        records = cloudflare.list_records(cf, zone_id, dns.record_name(p)) if zone_id else []
        report(f"dns {dns.record_name(p)}", bool(records),
                     "; ".join(f"{r.type} {r.content}" for r in records) or "missing")
        if p.edge is not None:
            from casera.steps import edge

            cert = hetzner.for_env(p, ctx.secrets).certificates.get(edge.certificate_name(p))
            report(f"origin certificate {edge.certificate_name(p)}", cert is not None,
                   f"expires {cert.not_valid_after}, {', '.join(cert.domain_names)}"
                   if cert else "missing")
    return result
