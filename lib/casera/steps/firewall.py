"""The Hetzner Cloud Firewall: exactly the params' rules, applied by the cluster label so every
new server gets it. Bootstrap applies it twice: before the servers (the rules that need no
node address) and after them (the cluster rules, ESP among them, name the nodes)."""

from __future__ import annotations

from casera.context import RunContext
from casera.params import Params
from casera.plan import Plan, apply
from casera.providers import hetzner
from casera.providers.hetzner import FirewallRule
from casera.result import StepResult, timed

ANYWHERE = ("0.0.0.0/0", "::/0")
WAIT_S = 300.0


def desired_firewall_rules(params: Params, node_ips: list[str],
                           pending: list[str] | None = None,
                           edge_sources: dict[str, list[str]] | None = None
                           ) -> list[FirewallRule]:
    """The firewall's rules; cluster rules only once there are nodes (Hetzner refuses a rule
    without sources), so bootstrap applies this again after the servers.

    ``pending`` names servers a dry run plans but whose addresses do not exist yet: their
    sources are shown as placeholders, like Terraform's "(known after apply)".
    ``edge_sources`` resolves ``load_balancer`` and ``cloudflare`` (see
    :func:`edge_sources`); a rule whose keyword resolves to nothing yet is left out."""
    rules = []
    for rule in params.firewall.rules:
        if rule.source == "anywhere":
            sources: list[str] = list(ANYWHERE)
        elif rule.source == "operators":
            sources = list(params.ssh.operator_cidrs)
        elif rule.source == "cluster":
            sources = [f"{ip}/32" for ip in sorted(node_ips)] + [
                f"<{name}: known after apply>" for name in pending or []]
        elif rule.source in ("load_balancer", "cloudflare"):
            sources = list((edge_sources or {}).get(str(rule.source), []))
        else:
            sources = list(rule.source)
        if not sources:
            continue
        rules.append(FirewallRule(direction="in", protocol=rule.protocol, port=rule.port,
                                  source_ips=tuple(sources), description=rule.description))
    return rules


def edge_sources(ctx: RunContext) -> dict[str, list[str]]:
    """Where public traffic to the nodes may come from, read fresh on every run:
    ``load_balancer``: ``load_balancer.node_facing_cidrs``, else the LB's public address
    (once it exists; a dry run shows a placeholder when the LB step plans it);
    ``cloudflare``: Cloudflare's published ranges (``GET /ips``), only when a rule uses it."""
    p = ctx.params
    used = {r.source for r in p.firewall.rules if isinstance(r.source, str)}
    found: dict[str, list[str]] = {}
    if "load_balancer" in used and p.load_balancer.enabled:
        if p.load_balancer.node_facing_cidrs is not None:
            found["load_balancer"] = list(p.load_balancer.node_facing_cidrs)
        else:
            lb = hetzner.for_env(p, ctx.secrets).load_balancers.get(p.load_balancer.name)
            found["load_balancer"] = [f"{lb.ipv4}/32"] if lb and lb.ipv4 else (
                [f"<load balancer {p.load_balancer.name}: known after apply>"]
                if ctx.dry_run else [])
    if "cloudflare" in used:
        from casera.providers import cloudflare
        from casera.steps.dns import cloudflare_client

        ranges = cloudflare.published_ranges(cloudflare_client(ctx))
        found["cloudflare"] = [*ranges.ipv4, *ranges.ipv6]
    return found


def describe_rule(rule: FirewallRule) -> str:
    port = f" {rule.port}" if rule.port else ""
    src = ("anywhere" if sorted(rule.source_ips) == sorted(ANYWHERE)
           else ", ".join(rule.source_ips))
    return f"in {rule.protocol}{port} from {src} ({rule.description})"


def ensure_firewall(ctx: RunContext) -> StepResult:
    """Hetzner Cloud Firewall ``firewall.name`` with exactly the params' rules, applied by the
    cluster label so every new server gets it."""
    p = ctx.params
    name, label = p.firewall.name, p.cluster_label
    with timed(StepResult("firewall", name, dry_run=ctx.dry_run)) as result:
        hz = hetzner.for_env(p, ctx.secrets)
        existing = {s.name: s.ipv4 for s in hz.servers.list(label) if s.ipv4}
        # A dry run plans against what its earlier steps would have made: servers planned by
        # ensure_servers, and this firewall as its first application would have created it.
        pending = [n for n in ctx.planned.get("servers", []) if n not in existing]
        desired = desired_firewall_rules(p, list(existing.values()),
                                         pending if ctx.dry_run else None, edge_sources(ctx))
        found = hz.firewalls.get(name)
        planned: list[FirewallRule] | None = ctx.planned.get("firewall") if ctx.dry_run else None
        plan = Plan(gate_title=f"Firewall {name}: remove rule(s)")
        added: list[FirewallRule] = []
        removed: list[FirewallRule] = []
        if found is None and planned is None:
            plan.add(f"+ firewall {name}", lambda: hz.firewalls.create_or_get(
                name, desired, dict(p.hetzner.labels), apply_to_label=label)[1])
            plan.show(f"+ applied to label {label}")
            for rule in desired:  # made with the firewall
                plan.add("+ " + describe_rule(rule))
        else:
            current = list(planned or []) if found is None else list(found.rules)
            have = {r.key: r for r in current}
            want = {r.key: r for r in desired}
            added = [want[k] for k in want if k not in have]
            removed = [have[k] for k in have if k not in want]
            # One set_rules call makes every rule change: it hangs on the first line.
            set_rules = [lambda: hz.firewalls.set_rules(found, desired)] if found else [None]
            for rule in added:
                # A rule whose sources changed (Cloudflare's ranges, the LB) reads as a diff.
                before = next((r for r in removed if r.key[:3] == rule.key[:3]), None)
                if before is not None:
                    removed.remove(before)
                    plan.add(f"~ {_source_diff(before, rule)}",
                             set_rules.pop() if set_rules else None, destructive=True)
                    continue
                plan.add("+ " + describe_rule(rule), set_rules.pop() if set_rules else None)
            for rule in removed:
                plan.add("- " + describe_rule(rule), set_rules.pop() if set_rules else None,
                         destructive=True)
            if found is not None and label not in found.applied_to_labels:
                plan.add(f"+ applied to label {label}",
                         lambda: hz.firewalls.apply_to_label(found, label))
            plan.gate_title = f"Firewall {name}: remove {len(removed)} rule(s)"
            if not plan:
                result.reason = "rules and label selector as params say"
        applied = apply(ctx, result, plan)
        if applied.dry_run:
            ctx.planned["firewall"] = desired
            return result
        hetzner.wait_for([a for actions in applied.made for a in actions],
                         f"firewall {name}", WAIT_S)
        if found is not None and plan:
            result.reason = f"{len(added)} rule(s) added, {len(removed)} removed"
        _verify_firewall(hz, name, desired, result)
    return result


def _source_diff(before: FirewallRule, after: FirewallRule) -> str:
    gone = sorted(set(before.source_ips) - set(after.source_ips))
    new = sorted(set(after.source_ips) - set(before.source_ips))
    port = f" {after.port}" if after.port else ""
    return (f"in {after.protocol}{port} ({after.description}) sources: "
            + ", ".join([*(f"+{s}" for s in new), *(f"-{s}" for s in gone)]))


def _verify_firewall(hz: hetzner.Hetzner, name: str, desired: list[FirewallRule],
                     result: StepResult) -> None:
    found = hz.firewalls.get(name)
    have = {r.key for r in found.rules} if found else set()
    result.check("rules match params", have == {r.key for r in desired},
                 f"{len(have)} inbound rules" if found else f"firewall {name} not found")
    if any(r.protocol == "esp" for r in desired):
        result.check("ESP between nodes allowed", any(k[1] == "esp" for k in have),
                     "IP protocol 50 from the nodes (the encrypted overlay needs it)")
    else:
        result.diff.append("  no servers yet: ESP and the other cluster rules come after them")
