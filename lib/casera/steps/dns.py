"""Cloudflare DNS: the API's A record (``cloudflare.record`` in ``cloudflare.zone``), pointing
at the load balancer, or at one node when there is none.

Not reconciled here: the zone itself (it must exist in the account the token belongs to),
AAAA records (reported, left alone: with ``proxied`` Cloudflare answers IPv6 itself), TTL
(automatic), and any other name in the zone.
"""

from __future__ import annotations

import ipaddress
from functools import partial

from casera.context import RunContext
from casera.errors import ProviderError, StepFailed
from casera.params import Params
from casera.plan import Plan, apply
from casera.providers import cloudflare
from casera.result import StepResult, timed

AUTOMATIC_TTL = 1


def record_name(params: Params) -> str:
    """The fully qualified name, as Cloudflare stores and lists it."""
    zone, record = params.cloudflare.zone.rstrip("."), params.cloudflare.record.rstrip(".")
    if record in ("@", zone):
        return zone
    return record if record.endswith("." + zone) else f"{record}.{zone}"


def cloudflare_client(ctx: RunContext) -> cloudflare.Cloudflare:
    return cloudflare.client(ctx.secrets.get("cloudflare_api_token"),
                             ctx.params.cloudflare.api_base)


def _zone_id(cf: cloudflare.Cloudflare, params: Params) -> str:
    zone_id = cloudflare.find_zone_id(cf, params.cloudflare.zone)
    if zone_id is None:
        raise StepFailed(f"Cloudflare zone {params.cloudflare.zone} is not visible to this API "
                         "token: add the zone to the account, or give the token Zone:Read and "
                         "DNS:Edit on it")
    return zone_id


def _show(record: cloudflare.DnsRecord) -> str:
    return f"{record.type} {record.name} -> {record.content}" + (
        " (proxied)" if record.proxied else " (DNS only)")


def ensure_dns_record(ctx: RunContext, target_ip: str | None) -> StepResult:
    """Exactly one A record for the API's name, pointing at ``target_ip``, proxied as params
    say. Other A records of that name are deleted behind the gate (they would send a share
    of the traffic elsewhere); a CNAME of that name stops the step (it is not ours to drop)."""
    p = ctx.params
    name = record_name(p)
    proxied = p.cloudflare.proxied
    how = " (proxied)" if proxied else " (DNS only)"
    with timed(StepResult("dns record", name, dry_run=ctx.dry_run)) as result:
        if target_ip is None:
            # Only a dry run on a fresh environment gets here: the LB and servers are planned.
            if not ctx.dry_run:
                raise StepFailed("no load balancer and no server to point DNS at: run the "
                                 "servers and load balancer steps first")
            plan = Plan()
            plan.add(f"+ A {name} -> (the LB's address, once it exists)")
            apply(ctx, result, plan)
            return result
        if ipaddress.ip_address(target_ip).version != 4:
            raise StepFailed(f"an A record needs an IPv4 address, not {target_ip}")
        cf = cloudflare_client(ctx)
        zone_id = _zone_id(cf, p)
        records = cloudflare.list_records(cf, zone_id, name)
        cnames = [r for r in records if r.type == "CNAME"]
        if cnames:
            raise StepFailed(f"{name} is a CNAME to {cnames[0].content} in Cloudflare; an A "
                             "record cannot share its name. Remove the CNAME (it is not one "
                             "casera made) and re-run")
        a_records = [r for r in records if r.type == "A"]
        keep = next((r for r in a_records if r.content == target_ip), None) or (
            a_records[0] if a_records else None)
        extra = [r for r in a_records if r is not keep]
        plan = Plan(gate_title=f"Cloudflare {name}: delete {len(extra)} other A record(s)")
        for record in records:
            if record.type == "AAAA":
                plan.show(f"! {_show(record)} left alone")
        write = partial(_write_record, ctx, cf, zone_id, name, target_ip, proxied)
        if keep is None:
            plan.add(f"+ A {name} -> {target_ip}{how}", write)
        elif keep.content != target_ip or keep.proxied != proxied:
            plan.add(f"~ {_show(keep)}  =>  A {name} -> {target_ip}{how}",
                     partial(write, keep.id))
        for record in extra:
            plan.add(f"- {_show(record)}", partial(cloudflare.delete_record, cf, zone_id,
                                                   record.id), destructive=True)
        applied = apply(ctx, result, plan)
        if applied.dry_run and plan:
            return result
        if not plan:
            result.reason = f"points at {target_ip}, " + ("proxied" if proxied else "DNS only")
        else:
            result.reason = ("created" if keep is None else "updated") + (
                f", {len(extra)} other A record(s) deleted" if extra else "")
        _verify(cf, zone_id, p, target_ip, result)
    return result


def _write_record(ctx: RunContext, cf: cloudflare.Cloudflare, zone_id: str, name: str,
                  target_ip: str, proxied: bool,
                  record_id: str | None = None) -> cloudflare.DnsRecord:
    """Create the A record, or update ``record_id`` in place."""
    try:
        if record_id is None:
            return cloudflare.create_record(cf, zone_id, name, "A", target_ip, proxied,
                                            AUTOMATIC_TTL)
        return cloudflare.update_record(cf, zone_id, record_id, name, "A", target_ip, proxied,
                                        AUTOMATIC_TTL)
    except ProviderError as exc:
        if not cloudflare.refused_as_bad_request(exc):
            raise
        # Most often a proxied record to a private address, which Cloudflare refuses.
        raise StepFailed(f"Cloudflare refused A {name} -> {target_ip} (proxied: {proxied}): "
                         f"{exc}. A proxied record needs a public target; check the target "
                         f"or cloudflare.proxied in params/{ctx.env}.yaml") from None


def verify_dns_record(ctx: RunContext, target_ip: str | None = None) -> StepResult:
    """Read-only: one A record for the API's name, proxied as params say, and pointing at
    ``target_ip`` when given."""
    with timed(StepResult("dns record", record_name(ctx.params),
                          dry_run=ctx.dry_run)) as result:
        cf = cloudflare_client(ctx)
        _verify(cf, _zone_id(cf, ctx.params), ctx.params, target_ip, result)
    return result


def _verify(cf: cloudflare.Cloudflare, zone_id: str, params: Params, target_ip: str | None,
            result: StepResult) -> StepResult:
    name = record_name(params)
    a_records = [r for r in cloudflare.list_records(cf, zone_id, name) if r.type == "A"]
    if not result.check("one A record", len(a_records) == 1,
                        _show(a_records[0]) if len(a_records) == 1 else
                        f"{len(a_records)} A records: "
                        + ("; ".join(map(_show, a_records)) or "none")):
        return result
    record = a_records[0]
    if target_ip is not None:
        result.check("points at the target", record.content == target_ip,
                     record.content if record.content == target_ip else
                     f"{record.content}, wanted {target_ip}")
    want = params.cloudflare.proxied
    result.check("proxied as params say", record.proxied == want,
                 ("proxied through Cloudflare" if record.proxied else "DNS only")
                 + ("" if record.proxied == want else
                    f", params say {'proxied' if want else 'DNS only'}"))
    return result
