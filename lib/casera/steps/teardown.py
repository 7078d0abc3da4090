"""Teardown: an environment's servers, load balancer, firewall, DNS record, certificates,
Docker secrets and scoped B2 keys removed behind the gate; its data kept unless asked.

The bootstrap's steps in reverse, so nothing is deleted under something that still uses it:
the DNS record first (no new visitors), the LB (it holds the origin certificate), the
certificates, the servers (the swarm, its Docker secrets and Redis's volume go with them,
after a final Redis snapshot to B2), the firewall (Hetzner refuses to delete one that is still
applied), the nodes' addresses in Neon's allowlist (Hetzner hands addresses on), the scoped
B2 keys. Each step reads what exists, plans, and deletes only that: a re-run after a stop
finds less and finishes; a re-run after success changes nothing.

What stays, and why:
- the Neon project: the bootstrap cannot create one (it is made once, in Neon's console, with
  its plan), and it holds the data; delete it there if that is really meant;
- B2 buckets and every file version in them, unless ``delete_data`` (then also only with
  ``confirm=<env>``): the Redis snapshots, uploads and certificates are the data;
- the operator's stores (``secrets/<env>.env``, the origin key and certificate, which the
  next bootstrap uploads again) and the Hetzner SSH key (free, and the bootstrap reuses it);
- the run lock (``casera-lock-<env>``), which the runner holds during this very run.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any

from casera import b2_keys
from casera.context import RunContext
from casera.errors import StepFailed
from casera.plan import Plan, apply
from casera.providers import b2, cloudflare, hetzner, ssh
from casera.result import StepResult, timed
from casera.steps import database, redis_backup
from casera.steps.dns import cloudflare_client, record_name
from casera.steps.edge import ORIGIN_LABEL
from casera.steps.storage import master_api
from casera.steps.summary import monthly_price

WAIT_S = 600.0


def _needs_confirm(env: str, delete_data: bool) -> list[str]:
    """Why a real run needs ``confirm=<env>``: production always, and deleting data anywhere."""
    why = []
    if env == "production":
        why.append("this is production")
    if delete_data:
        why.append("delete_data=True deletes the B2 buckets and every file version in them")
    return why


def check_teardown_allowed(ctx: RunContext, confirm: str = "",
                           delete_data: bool = False) -> StepResult:
    """Refuse before anything is read or changed when the parameters do not allow this
    teardown: production, and deleting data, need ``confirm`` to name the environment."""
    with timed(StepResult("teardown allowed", ctx.env, dry_run=ctx.dry_run)) as result:
        why = _needs_confirm(ctx.env, delete_data)
        if confirm and confirm != ctx.env:
            raise StepFailed(f"parameter confirm={confirm!r} does not name this environment "
                             f"({ctx.env!r}); nothing was changed. Fix: -p confirm={ctx.env}, "
                             "or run against the environment you meant (--env)")
        if why and confirm != ctx.env:
            if not ctx.dry_run:
                raise StepFailed(f"teardown of {ctx.env} refused: {' and '.join(why)}, so the "
                                 f"parameter confirm must name it; nothing was changed. Fix: "
                                 f"add -p confirm={ctx.env} once you have read the dry run "
                                 f"(casera run teardown --env {ctx.env} --dry-run)")
            result.note("a real run needs", f"-p confirm={ctx.env} ({' and '.join(why)})")
        result.reason = ("data deleted too (delete_data=True)" if delete_data else
                         "data kept: B2 buckets and the Neon project stay")
        result.note("kept in any case", "the Neon project (the bootstrap cannot create one), "
                    "the operator's stores, the Hetzner SSH key, the run lock")
    return result


def take_final_snapshot(ctx: RunContext, wanted: bool = True) -> StepResult:
    """A last Redis snapshot to B2 before its volume goes with the servers (the scheduled
    ones may be up to ``redis.backup.interval_min`` old). None to take when no server is left
    (a re-run); ``wanted=False`` skips it, and says what that loses."""
    p = ctx.params
    hz = hetzner.for_env(p, ctx.secrets)
    if not hz.servers.list(p.cluster_label):
        with timed(StepResult("redis snapshot", "final", dry_run=ctx.dry_run)) as result:
            result.reason = "no servers left: no Redis to snapshot"
        return result
    if not wanted:
        with timed(StepResult("redis snapshot", "final", dry_run=ctx.dry_run)) as result:
            result.reason = (f"skipped (final_snapshot=False): writes since the newest "
                             f"scheduled snapshot (at most {p.redis.backup.interval_min} min) "
                             "are lost with the servers")
        return result
    return redis_backup.take_snapshot(ctx)


def remove_dns_record(ctx: RunContext) -> StepResult:
    """The API's A records (the name the bootstrap owns): deleted, so no visitor is sent to
    an address that is about to go. AAAA or CNAME records of the name are not casera's: left."""
    p = ctx.params
    name = record_name(p)
    with timed(StepResult("dns record", name, dry_run=ctx.dry_run)) as result:
        cf = cloudflare_client(ctx)
        zone_id = cloudflare.find_zone_id(cf, p.cloudflare.zone)
        if zone_id is None:
            result.reason = f"zone {p.cloudflare.zone} not visible to the token: no record"
            return result
        records = cloudflare.list_records(cf, zone_id, name)
        plan = Plan(gate_title=f"Cloudflare: delete the DNS record(s) of {name}")
        for record in records:
            if record.type != "A":
                plan.show(f"! {record.type} {name} -> {record.content}: not casera's, left")
                continue
            plan.add(f"- A {name} -> {record.content}",
                     partial(cloudflare.delete_record, cf, zone_id, record.id),
                     destructive=True)
        if not plan:
            result.reason = f"no A record for {name}"
        apply(ctx, result, plan)
    return result


@dataclass
class _Priced:
    net: Decimal = Decimal(0)
    gross: Decimal = Decimal(0)
    currency: str = ""


def _price_text(pricing: dict[str, Any], kind: str, type_name: str, location: str,
                total: _Priced) -> str:
    price = monthly_price(pricing, kind, type_name, location)
    if price is None:
        return f"the API lists no price for {type_name} in {location}"
    total.net, total.gross = total.net + price[0], total.gross + price[1]
    return f"{price[0]:.2f} net / {price[1]:.2f} gross {total.currency} a month"


def _pricing(ctx: RunContext, hz: hetzner.Hetzner) -> tuple[dict[str, Any], _Priced]:
    pricing = ctx.shared.get("hetzner_pricing")
    if pricing is None:
        pricing = ctx.shared["hetzner_pricing"] = hz.catalog.pricing()
    return pricing, _Priced(currency=str(pricing["currency"]))


def _note_saving(result: StepResult, total: _Priced) -> None:
    if total.net:
        result.note("monthly cost removed", f"{total.net:.2f} net / {total.gross:.2f} gross "
                    f"{total.currency} (Hetzner's live prices)")


def remove_load_balancer(ctx: RunContext) -> StepResult:
    """The LB, with its services and its public address (a new LB gets a new one: the DNS
    record follows it on the next bootstrap)."""
    p = ctx.params
    with timed(StepResult("load balancer", p.load_balancer.name, dry_run=ctx.dry_run)) as result:
        hz = hetzner.for_env(p, ctx.secrets)
        lb = hz.load_balancers.get(p.load_balancer.name)
        plan = Plan(gate_title=f"Delete load balancer {p.load_balancer.name}")
        if lb is not None:
            pricing, total = _pricing(ctx, hz)
            cost = _price_text(pricing, "load_balancer_types", lb.type, lb.location, total)
            plan.add(f"- load balancer {lb.name} ({lb.type}, {lb.location}, "
                     f"{lb.ipv4 or 'no IPv4'}, {len(lb.services)} service(s)): {cost}",
                     partial(hz.load_balancers.delete, lb), destructive=True)
            _note_saving(result, total)
        else:
            result.reason = "none"
        apply(ctx, result, plan)
    return result


def remove_origin_certificates(ctx: RunContext) -> StepResult:
    """Every generation of the origin certificate in Hetzner (after the LB that used it).
    The operator's copy of the key and certificate stays: the next bootstrap uploads it
    again, and Cloudflare's Origin CA certificate is not revoked."""
    p = ctx.params
    with timed(StepResult("origin certificates", p.hetzner.location,
                          dry_run=ctx.dry_run)) as result:
        if p.edge is None:
            result.reason = "no edge in params: casera made no certificate"
            return result
        hz = hetzner.for_env(p, ctx.secrets)
        selector = f"{ORIGIN_LABEL}={p.edge.certificate_name}"
        plan = Plan(gate_title=f"Delete the origin certificates {selector} from Hetzner")
        for cert in hz.certificates.list(selector):
            plan.add(f"- Hetzner certificate {cert.name} ({', '.join(cert.domain_names)}, "
                     f"valid until {cert.not_valid_after}); its key stays in the operator's "
                     "store", partial(hz.certificates.delete, cert), destructive=True)
        if not plan:
            result.reason = f"no certificate labelled {selector}"
        apply(ctx, result, plan)
    return result


def remove_servers(ctx: RunContext, timeout: float = WAIT_S) -> StepResult:
    """Every server with the cluster label, deleted together (disks destroyed), and their
    pinned host keys forgotten. The swarm goes with them: its Docker secrets and configs
    live in its Raft store on these disks, Redis's volume on one of them."""
    p = ctx.params
    with timed(StepResult("servers", p.cluster_label, dry_run=ctx.dry_run)) as result:
        hz = hetzner.for_env(p, ctx.secrets)
        servers = sorted(hz.servers.list(p.cluster_label), key=lambda s: s.name)
        known = ssh.KnownHosts.for_env(p.env)
        plan = Plan(gate_title=f"Delete {len(servers)} server(s) of {ctx.env}: their disks, "
                    "the swarm with its Docker secrets, and Redis's volume")
        if servers:
            pricing, total = _pricing(ctx, hz)
            for server in servers:
                cost = _price_text(pricing, "server_types", server.server_type,
                                   server.location, total)
                plan.add(f"- server {server.name} ({server.server_type}, {server.location}, "
                         f"{server.ipv4 or 'no IPv4'}, {server.status}): {cost}",
                         partial(hz.servers.delete, server), destructive=True)
            plan.show(f"! with them: the swarm, its Docker secrets and configs, the Redis "
                      f"volume (its data is in the snapshot taken before), the host key pins "
                      f"in {known.path.name}")
            _note_saving(result, total)
        else:
            result.reason = "none with the label"
        applied = apply(ctx, result, plan)
        if applied.dry_run or not servers:
            return result
        hetzner.wait_for([a for a in applied.made if a is not None], "server deletion",
                         timeout)
        for server in servers:
            known.unpin(server.name)
        left = [s.name for s in hz.servers.list(p.cluster_label)]
        result.check("no server left", not left, ", ".join(left) or
                     f"{len(servers)} deleted, their host keys unpinned")
    return result


def remove_firewall(ctx: RunContext) -> StepResult:
    """The params firewall: taken off the cluster label, then deleted (Hetzner refuses to
    delete a firewall still applied to anything). Never the run lock's firewall."""
    p = ctx.params
    with timed(StepResult("firewall", p.firewall.name, dry_run=ctx.dry_run)) as result:
        if p.firewall.name.startswith("casera-lock-"):
            raise StepFailed(f"firewall.name {p.firewall.name!r} in params/{ctx.env}.yaml is a "
                             "run lock's name; teardown never deletes a lock. Fix the name")
        hz = hetzner.for_env(p, ctx.secrets)
        fw = hz.firewalls.get(p.firewall.name)
        plan = Plan(gate_title=f"Delete firewall {p.firewall.name}")
        if fw is not None:
            plan.add(f"- firewall {fw.name} ({len(fw.rules)} rules, applied to "
                     f"{', '.join(fw.applied_to_labels) or 'nothing'})",
                     partial(_delete_firewall, hz, fw), destructive=True)
        else:
            result.reason = "none"
        apply(ctx, result, plan)
    return result


def _delete_firewall(hz: hetzner.Hetzner, fw: Any) -> bool:
    for selector in fw.applied_to_labels:
        hetzner.wait_for(hz.firewalls.remove_from_label(fw, selector),
                         f"firewall {fw.name} removed from {selector}", WAIT_S)
    return hz.firewalls.delete(fw)


def shrink_ip_allowlist(ctx: RunContext) -> StepResult:
    """On a plan with IP Allow: the allowlist back to the operator's own address(es). The
    nodes' addresses go back to Hetzner, who hands them to other customers. Never emptied:
    an empty allowlist lets every address in."""
    p = ctx.params
    with timed(StepResult("neon ip allowlist", p.neon.project_id,
                          dry_run=ctx.dry_run)) as result:
        api = database.neon_client(ctx)
        project = database.project_with_ip_allow(api, ctx, result)
        if project is None:
            return result
        operators = {o.network for o in database.operator_addresses(ctx)}
        have = database.normalise_allowlist(project.allowed_ips)
        removed = sorted(have - operators)
        plan = Plan(gate_title=f"Neon {p.neon.project_id}: remove {len(removed)} address(es) "
                    "from the IP allowlist")
        write = partial(api.update_project_and_wait, p.neon.project_id, {"settings": {
            "allowed_ips": {"ips": sorted(operators), "protected_branches_only": False}}})
        for number, ip in enumerate(removed):
            plan.add(f"- {ip}", write if number == 0 else None, destructive=True)
        if not plan:
            result.reason = f"only the operator's address(es): {', '.join(sorted(operators))}"
        apply(ctx, result, plan)
    return result


def remove_app_keys(ctx: RunContext) -> StepResult:
    """The scoped B2 keys params name (the current ones and any replaced ones not deleted
    yet), and their entries in the operator's key store. The master key is not casera's."""
    p = ctx.params
    names = {kp.name for kp in p.b2.keys}
    with timed(StepResult("b2 keys", ", ".join(sorted(names)), dry_run=ctx.dry_run)) as result:
        api = master_api(ctx)
        store = b2_keys.key_store(ctx.env)
        keys = sorted((k for k in b2.list_keys(api) if k.name in names),
                      key=lambda k: (k.name, k.key_id))
        listed = {k.name for k in keys}
        stale = sorted((set(store.load()) | set(store.retiring())) & names - listed)
        plan = Plan(gate_title=f"Delete {len(keys)} scoped B2 key(s) of {ctx.env}")
        for key in keys:
            plan.add(f"- key {key.name} ({key.key_id}, {', '.join(key.capabilities)}), and "
                     f"its entry in {store.path.name}",
                     partial(_delete_key, api, store, key), destructive=True)
        for name in stale:
            # A run stopped between a key's deletion and its entry's: finish the entry.
            plan.add(f"- {name} in {store.path.name} (its key is gone from B2)",
                     partial(store.forget, name))
        if not plan:
            result.reason = "none"
        apply(ctx, result, plan)
    return result


def _delete_key(api: b2.B2Api, store: b2_keys.B2KeyStore, key: b2.KeyInfo) -> None:
    b2.delete_key(api, key.key_id)
    store.forget(key.name)


def remove_buckets(ctx: RunContext, delete_data: bool = False) -> StepResult:
    """Kept unless ``delete_data`` (which :func:`check_teardown_allowed` let through only
    with ``confirm=<env>``): then every file version, hide markers too, and the bucket."""
    p = ctx.params
    with timed(StepResult("b2 buckets", ctx.env, dry_run=ctx.dry_run)) as result:
        api = master_api(ctx)
        plan = Plan(gate_title=f"DELETE THE DATA of {ctx.env}: B2 buckets and every file "
                    "version in them, irreversibly")
        for role, bp in sorted(p.b2.buckets.items()):
            bucket = b2.get_bucket(api, bp.name)
            if bucket is None:
                continue
            usage = b2.bucket_usage(api, bucket.bucket_id, bucket.name)
            what = (f"bucket {bp.name} ({role}): {usage.names} file(s), {usage.versions} "
                    f"version(s), {usage.size} bytes")
            if delete_data:
                plan.add(f"- {what}", partial(b2.empty_and_delete_bucket, api,
                                              bucket.bucket_id, bucket.name), destructive=True)
            else:
                result.note(f"kept {bp.name}", what)
        if not delete_data:
            result.reason = "kept (delete_data=False): the data stays for the next bootstrap"
        elif not plan:
            result.reason = "none left"
        apply(ctx, result, plan)
    return result


def verify_torn_down(ctx: RunContext, delete_data: bool = False) -> StepResult:
    """Read back: nothing of the environment's left in Hetzner, Cloudflare and B2 that the
    teardown removes; the data where it was to stay; the Neon project untouched."""
    p = ctx.params
    with timed(StepResult("torn down", ctx.env, dry_run=ctx.dry_run)) as result:
        if ctx.dry_run:
            result.reason = "dry run: nothing was deleted, so there is nothing to read back"
            return result
        hz = hetzner.for_env(p, ctx.secrets)
        servers = [s.name for s in hz.servers.list(p.cluster_label)]
        result.check("servers", not servers, ", ".join(servers) or "none")
        lb = hz.load_balancers.get(p.load_balancer.name)
        result.check("load balancer", lb is None, lb.name if lb else "none")
        fw = hz.firewalls.get(p.firewall.name)
        result.check("firewall", fw is None, fw.name if fw else "none")
        if p.edge is not None:
            certs = [c.name for c in hz.certificates.list(
                f"{ORIGIN_LABEL}={p.edge.certificate_name}")]
            result.check("origin certificates", not certs, ", ".join(certs) or "none")
        cf = cloudflare_client(ctx)
        zone_id = cloudflare.find_zone_id(cf, p.cloudflare.zone)
        a_records = [r.content for r in cloudflare.list_records(cf, zone_id, record_name(p))
                     if r.type == "A"] if zone_id else []
        result.check("DNS A record", not a_records, ", ".join(a_records) or "none")
        api = master_api(ctx)
        names = {kp.name for kp in p.b2.keys}
        keys = sorted(k.name for k in b2.list_keys(api) if k.name in names)
        result.check("scoped B2 keys", not keys, ", ".join(keys) or "none")
        stored = set(b2_keys.key_store(ctx.env).load())
        result.check("key store entries", not stored & names, ", ".join(sorted(stored & names))
                     or "none")
        buckets = {bp.name: b2.get_bucket(api, bp.name) for bp in p.b2.buckets.values()}
        if delete_data:
            left = sorted(n for n, b in buckets.items() if b is not None)
            result.check("buckets deleted", not left, ", ".join(left) or "none")
        else:
            gone = sorted(n for n, b in buckets.items() if b is None)
            result.check("buckets kept", not gone, f"missing {', '.join(gone)}" if gone else
                         f"{len(buckets)} kept")
        project = database.neon_client(ctx).project(p.neon.project_id)
        result.check("Neon project kept", project is not None,
                     f"{p.neon.project_id} untouched" + (
                         " (delete it in Neon's console if that is meant)" if delete_data
                         else ""))
    return result

