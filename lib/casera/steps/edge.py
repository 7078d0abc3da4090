"""The edge: an origin certificate for the API's hostname on the load balancer, Cloudflare in
Full (strict) mode with HTTPS enforced, and checks from outside.

- :func:`ensure_origin_certificate`: the key pair for generation ``edge.certificate_generation``
  in the operator's store (``casera.origin_tls``; from Cloudflare's Origin CA, or brought by
  the operator), uploaded to Hetzner as ``<certificate_name>-g<generation>``.
  The load balancer step then serves it (``steps.load_balancer``).
- :func:`retire_old_certificates`: after the LB switched, older generations are deleted from
  Hetzner (behind the gate). Rotating is raising the generation by one.
- :func:`ensure_zone_settings`: SSL Full (strict), Always Use HTTPS, minimum TLS, and HSTS only
  when params opt in.
- :func:`verify_certificate_expiry`: red within ``edge.renew_within_days`` of expiry (the
  health runbook calls it too).
- :func:`verify_edge`: from outside, through the LB: the certificate chain for the hostname,
  http answered with a redirect, ``/readyz`` over HTTPS, and the zone reporting strict.

Not reconciled here: revoking old Origin CA certificates at Cloudflare (they expire; revoke
them in the dashboard if a key leaked), Authenticated Origin Pulls (Hetzner's LB cannot ask
for client certificates, so the LB itself stays reachable from anywhere on 443: what keeps
direct visitors out is that only Cloudflare trusts the Origin CA).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from casera.context import RunContext
from casera.errors import StepFailed
from casera.origin_tls import (
    facts,
    fingerprint_of_der,
    key_store,
    new_key_and_csr,
    signed_by,
    store_dir,
)
from casera.params import EdgeParams, Params
from casera.plan import Plan, apply
from casera.providers import cloudflare, hetzner
from casera.result import StepResult, timed
from casera.steps.api_endpoint import ApiEndpoint, api_endpoint_for, origin_ca_file
from casera.steps.dns import cloudflare_client, record_name

ORIGIN_LABEL = "casera-origin-certificate"


def _edge(params: Params) -> EdgeParams:
    if params.edge is None:
        raise StepFailed("params have no edge section: the edge steps need it (see "
                         "params/local.yaml)")
    return params.edge


def certificate_name(params: Params, generation: int | None = None) -> str:
    edge = _edge(params)
    return f"{edge.certificate_name}-g{generation or edge.certificate_generation}"


def _labels(params: Params) -> dict[str, str]:
    return {**params.hetzner.labels, ORIGIN_LABEL: _edge(params).certificate_name}


def ensure_origin_certificate(ctx: RunContext) -> StepResult:
    """The current generation's certificate in the operator's store and in Hetzner."""
    p = ctx.params
    name, host = certificate_name(p), record_name(p)
    edge = _edge(p)
    with timed(StepResult("origin certificate", name, dry_run=ctx.dry_run)) as result:
        store = key_store(ctx.env)
        hz = hetzner.for_env(p, ctx.secrets)
        stored = store.load(name)
        uploaded = hz.certificates.get(name)
        plan = Plan()
        pair: dict[str, Any] = {}
        if stored is None and uploaded is not None:
            raise StepFailed(f"Hetzner has certificate {name}, but its key is not in "
                             f"{store_dir(ctx.env)} (made on another machine?): copy that "
                             f"store here, or raise edge.certificate_generation to rotate to "
                             f"a new certificate")
        if stored is None:
            if edge.certificate_source == "operator":
                crt, key = store.files(name)
                raise StepFailed(f"edge.certificate_source is operator, but {crt} and {key} "
                                 f"are not there: put the certificate chain (PEM) and its "
                                 f"private key there (mode 0600), or use cloudflare_origin_ca")
            plan.add(f"+ Cloudflare Origin CA certificate for {host}, "
                     f"{edge.certificate_validity_days} days; its key made here and kept in "
                     f"{store_dir(ctx.env)}", lambda: _make_origin_pair(ctx, name, host, pair))
        else:
            pair.update(certificate=stored[0], key=stored[1])
        if uploaded is None:
            plan.add(f"+ Hetzner certificate {name} (uploaded, for {host})",
                     lambda: hz.certificates.upload(name, pair["certificate"], pair["key"],
                                                    _labels(p)))
        elif stored is not None and uploaded.fingerprint != facts(stored[0]).fingerprint:
            raise StepFailed(f"Hetzner certificate {name} is not the one in "
                             f"{store_dir(ctx.env)} (fingerprints differ): raise "
                             f"edge.certificate_generation to upload a new one, or restore the "
                             f"stored pair")
        if not plan:
            result.reason = f"stored and uploaded (fingerprint {uploaded.fingerprint})" \
                if uploaded else "stored"
        applied = apply(ctx, result, plan)
        if applied.dry_run:
            ctx.planned["origin_certificate"] = name
            return result
        _verify_certificate(ctx, result, hz.certificates.get(name), pair["certificate"])
    return result


def _make_origin_pair(ctx: RunContext, name: str, host: str, pair: dict[str, Any]) -> None:
    """Key and CSR here, Cloudflare signs, both stored before anything uploads them."""
    key, csr = new_key_and_csr(host)
    cf = cloudflare_client(ctx)
    made = cloudflare.create_origin_certificate(cf, csr, [host],
                                                _edge(ctx.params).certificate_validity_days)
    key_store(ctx.env).put(name, made.certificate, key)
    pair.update(certificate=made.certificate, key=key)


def _verify_certificate(ctx: RunContext, result: StepResult,
                        uploaded: hetzner.Certificate | None, certificate_pem: str) -> None:
    host = record_name(ctx.params)
    found = facts(certificate_pem)
    result.check("uploaded to Hetzner", uploaded is not None and uploaded.fingerprint ==
                 found.fingerprint, f"fingerprint {found.fingerprint}" if uploaded else
                 "not found in the Hetzner project")
    result.check(f"covers {host}", found.covers(host), ", ".join(found.names) or "no names")
    ca = origin_ca_file(ctx.params)
    trusted = ca is not None and ca.exists() and signed_by(certificate_pem, ca.read_text())
    result.check("signed by the trusted origin CA", trusted,
                 f"issuer {found.issuer}; CA file {ca}" + ("" if ca and ca.exists()
                                                             else " (missing)"))
    expiry_check(result, found.not_after, _edge(ctx.params).renew_within_days)


def expiry_check(result: StepResult, not_after: datetime, within_days: int,
                  now: datetime | None = None) -> bool:
    left = (not_after - (now or datetime.now(UTC))).total_seconds() / 86400
    return result.check(f"expires in more than {within_days} days", left > within_days,
                        f"expires {not_after:%Y-%m-%d %H:%M} UTC, in {left:.0f} days"
                        + ("" if left > within_days else
                           ": rotate now (raise edge.certificate_generation and run bootstrap)"))


def verify_certificate_expiry(ctx: RunContext, now: datetime | None = None) -> StepResult:
    """Read-only: the certificate the LB serves (the current generation, as uploaded to
    Hetzner) is valid for more than ``edge.renew_within_days``; red otherwise."""
    name = certificate_name(ctx.params)
    with timed(StepResult("certificate expiry", name, dry_run=ctx.dry_run)) as result:
        uploaded = hetzner.for_env(ctx.params, ctx.secrets).certificates.get(name)
        if uploaded is None and ctx.dry_run:
            # A dry run made nothing: the plan above says the certificate would be made.
            result.note("uploaded to Hetzner", f"{name} not there yet (dry run)")
            return result
        if not result.check("uploaded to Hetzner", uploaded is not None and
                            uploaded.not_valid_after is not None,
                            f"{uploaded.fingerprint}" if uploaded else f"{name} not found"):
            return result
        assert uploaded is not None and uploaded.not_valid_after is not None
        not_after = datetime.fromisoformat(uploaded.not_valid_after.replace("Z", "+00:00"))
        expiry_check(result, not_after, _edge(ctx.params).renew_within_days, now)
    return result


def retire_old_certificates(ctx: RunContext) -> StepResult:
    """Older generations of the origin certificate, once no LB uses them: deleted behind the
    gate (the LB step switched to the current one first)."""
    p = ctx.params
    current = certificate_name(p)
    with timed(StepResult("old origin certificates", _edge(p).certificate_name,
                          dry_run=ctx.dry_run)) as result:
        hz = hetzner.for_env(p, ctx.secrets)
        selector = f"{ORIGIN_LABEL}={_edge(p).certificate_name}"
        old = [c for c in hz.certificates.list(selector) if c.name != current]
        lb = hz.load_balancers.get(p.load_balancer.name)
        in_use = {i for s in (lb.services if lb else ()) for i in s.certificate_ids}
        plan = Plan(gate_title=f"Delete {len(old)} replaced origin certificate(s)")
        for cert in old:
            if cert.id in in_use and not ctx.dry_run:
                plan.show(f"! {cert.name} still used by load balancer {p.load_balancer.name}: "
                          "left for the next run")
                continue
            plan.add(f"- Hetzner certificate {cert.name} (fingerprint {cert.fingerprint})",
                     lambda c=cert: hz.certificates.delete(c), destructive=True)
        if not plan:
            result.reason = f"only {current} exists"
        apply(ctx, result, plan)
    return result


# --- Cloudflare zone settings -----------------------------------------------------------

def desired_zone_settings(params: Params) -> dict[str, Any]:
    """Setting name -> value. HSTS only when params opt in (see the runbook's text)."""
    edge = _edge(params)
    wanted: dict[str, Any] = {"ssl": "strict", "always_use_https": "on",
                              "min_tls_version": edge.min_tls_version}
    if edge.hsts.enabled:
        wanted["security_header"] = {"strict_transport_security": {
            "enabled": True, "max_age": edge.hsts.max_age_s,
            "include_subdomains": edge.hsts.include_subdomains,
            "preload": edge.hsts.preload, "nosniff": True}}
    return wanted


def _same(name: str, have: Any, want: Any) -> bool:
    if name != "security_header":
        return bool(have == want)
    have_hsts = (have or {}).get("strict_transport_security") or {}
    return all(have_hsts.get(k) == v for k, v in want["strict_transport_security"].items())


def ensure_zone_settings(ctx: RunContext) -> StepResult:
    p = ctx.params
    with timed(StepResult("zone settings", p.cloudflare.zone, dry_run=ctx.dry_run)) as result:
        cf = cloudflare_client(ctx)
        zone_id = _zone_id(cf, p)
        wanted = desired_zone_settings(p)
        plan = Plan()
        for name, value in wanted.items():
            have = cloudflare.get_setting(cf, zone_id, name)
            if not _same(name, have, value):
                plan.add(f"~ {name}: {_short(have)} => {_short(value)}",
                         lambda n=name, v=value: cloudflare.edit_setting(cf, zone_id, n, v))
        if "security_header" not in wanted:
            hsts = (cloudflare.get_setting(cf, zone_id, "security_header") or {}).get(
                "strict_transport_security") or {}
            result.note("HSTS", ("on in the zone (left alone: params do not manage it)"
                                 if hsts.get("enabled") else "off (edge.hsts.enabled: false)"))
        if not plan:
            result.reason = "Full (strict), Always Use HTTPS, minimum TLS as params say"
        if apply(ctx, result, plan).dry_run:
            return result
        for name, value in wanted.items():
            have = cloudflare.get_setting(cf, zone_id, name)
            result.check(f"{name} is {_short(value)}", _same(name, have, value), _short(have))
    return result


def _short(value: Any) -> str:
    if isinstance(value, dict):
        hsts = value.get("strict_transport_security") or {}
        return (f"HSTS max-age {hsts.get('max_age')}" if hsts.get("enabled")
                else "HSTS off")
    return str(value)


def _zone_id(cf: cloudflare.Cloudflare, params: Params) -> str:
    zone_id = cloudflare.find_zone_id(cf, params.cloudflare.zone)
    if zone_id is None:
        raise StepFailed(f"Cloudflare zone {params.cloudflare.zone} is not visible to this API "
                         "token: it needs Zone Settings:Edit and SSL and Certificates:Edit")
    return zone_id


# --- from outside ------------------------------------------------------------------------

def api_through_load_balancer(ctx: RunContext) -> ApiEndpoint:
    """The api's endpoint through this env's LB (see :mod:`casera.steps.api_endpoint`)."""
    lb = hetzner.for_env(ctx.params, ctx.secrets).load_balancers.get(
        ctx.params.load_balancer.name)
    if lb is None or lb.ipv4 is None:
        raise StepFailed(f"load balancer {ctx.params.load_balancer.name} does not exist yet")
    return api_endpoint_for(ctx.params, lb.ipv4)


def verify_edge(ctx: RunContext) -> StepResult:
    """Through the LB, from this machine: the origin certificate for the hostname (verified
    against the origin CA only), http answered with a redirect to https, ``/readyz`` over
    HTTPS; and Cloudflare reporting Full (strict)."""
    p = ctx.params
    with timed(StepResult("edge", record_name(p), dry_run=ctx.dry_run)) as result:
        if ctx.dry_run:
            result.reason = "dry run: nothing to check from outside yet"
            return result
        endpoint = api_through_load_balancer(ctx)
        stored = key_store(ctx.env).load(certificate_name(p))
        try:
            served = fingerprint_of_der(endpoint.peer_certificate_der())
            want = facts(stored[0]).fingerprint if stored else "(no stored certificate)"
            result.check(f"TLS chain for {endpoint.hostname}", served == want,
                         f"verified against {endpoint.ca_file}; fingerprint {served}"
                         + ("" if served == want else f", expected {want}"))
        except OSError as exc:
            result.check(f"TLS chain for {endpoint.hostname}", False,
                         f"{type(exc).__name__}: {exc}"[:200])
        plain = ApiEndpoint(endpoint.address, 80, endpoint.hostname, None)
        try:
            status, location = plain.redirect_location("/readyz")
            want_location = f"https://{endpoint.hostname}/readyz"
            result.check("http answered with a redirect to https",
                         status in (301, 302, 307, 308) and location == want_location,
                         f"{status} Location {location}")
        except OSError as exc:
            result.check("http answered with a redirect to https", False, str(exc)[:200])
        try:
            status, body = endpoint.get(_edge(p).health_check.path)
            result.check(f"GET {_edge(p).health_check.path} over https", status == 200,
                         f"{status} {body[:60]}")
        except OSError as exc:
            result.check(f"GET {_edge(p).health_check.path} over https", False, str(exc)[:200])
        cf = cloudflare_client(ctx)
        mode = cloudflare.get_setting(cf, _zone_id(cf, p), "ssl")
        result.check("zone SSL mode is Full (strict)", mode == "strict", str(mode))
    return result

