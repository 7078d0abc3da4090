"""The API calls: zones and DNS records, with Cloudflare's rules and answers.

Only what the runbooks and preflight use: list/get zones, list/create/get/patch/put/delete
DNS records of types A, AAAA, CNAME and TXT. Rules enforced, because a runbook that passes
here must not fail on Cloudflare:

- names are stored fully qualified: "api" and "api.casera.test" in zone casera.test are the
  same record; a name outside the zone gets the zone appended, as Cloudflare does;
- an identical record (type, name, content) is refused (81058); a CNAME cannot share a
  name with an A, AAAA or CNAME (81053), nor an A/AAAA with a CNAME (81054);
- a proxied A/AAAA must point at a routable address: Cloudflare refuses private, loopback,
  link-local and CGNAT targets (9003), so does this emulator unless started with
  ``allow_private_proxied`` (the local cloud's load balancer lives on such addresses);
- TXT records cannot be proxied (9004); proxied records report TTL 1 (automatic);
- TTL is 1 or 60..86400 (9021).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from casera_localcloud.cloudflare import errors
from casera_localcloud.cloudflare.store import Store, new_id, now

SUPPORTED_TYPES = ("A", "AAAA", "CNAME", "TXT")
ADDRESS_TYPES = ("A", "AAAA")
LABEL = re.compile(r"^(\*|[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)$")
# Targets Cloudflare will not proxy to. Not ipaddress's is_private: that also covers the
# documentation ranges (192.0.2.0/24 ...), which Cloudflare does proxy.
UNPROXIABLE_NETWORKS = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8")]
NAME_SERVERS = ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"]
FREE_PLAN = {"id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "Free Website", "price": 0,
             "currency": "USD", "frequency": "", "is_subscribed": False,
             "can_subscribe": False, "legacy_id": "free", "legacy_discount": False,
             "externally_managed": False}
ZONE_PER_PAGE = (5, 50, 20)            # min, max, default, from the API reference
RECORD_PER_PAGE = (5, 5_000_000, 100)


class CloudflareApi:
    def __init__(self, store: Store, allow_private_proxied: bool = False) -> None:
        self.store = store
        self.allow_private_proxied = allow_private_proxied

    # zones ---------------------------------------------------------------------------

    def zone_json(self, zone: Mapping[str, Any]) -> dict[str, Any]:
        account = self.store.account
        return {
            **zone,
            "development_mode": 0,
            "name_servers": NAME_SERVERS,
            "original_name_servers": None,
            "original_registrar": None,
            "original_dnshost": None,
            "vanity_name_servers": [],
            "meta": {"step": 2, "custom_certificate_quota": 0, "page_rule_quota": 3,
                     "phishing_detected": False},
            "owner": {"id": None, "type": "user", "name": None},
            "account": {"id": account["id"], "name": account["name"]},
            "tenant": {"id": None, "name": None},
            "tenant_unit": {"id": None},
            "permissions": ["#dns_records:edit", "#dns_records:read", "#zone:read"],
            "plan": FREE_PLAN,
        }

    def list_zones(self, query: Mapping[str, str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        with self.store.lock:
            zones = list(self.store.zones.values())
        name = query.get("name")
        if name:
            zones = [z for z in zones if _name_filter(name)(z["name"])]
        status = query.get("status")
        if status:
            zones = [z for z in zones if z["status"] == status]
        order = query.get("order") or "name"
        if order in ("name", "status"):
            zones.sort(key=lambda z: z[order], reverse=query.get("direction") == "desc")
        page, info = _paginate(zones, query, ZONE_PER_PAGE)
        return [self.zone_json(z) for z in page], info

    def get_zone(self, zone_id: str, path: str) -> dict[str, Any]:
        return self.zone_json(self._zone(zone_id, path))

    def _zone(self, zone_id: str, path: str) -> dict[str, Any]:
        zone = self.store.zones.get(zone_id)
        if zone is None:
            # Cloudflare cannot route to a zone it does not know, whether the id is
            # malformed or merely unknown.
            raise errors.no_route(path)
        return zone

    # records -------------------------------------------------------------------------

    def record_json(self, record: Mapping[str, Any]) -> dict[str, Any]:
        answer = {k: v for k, v in record.items() if k != "comment_modified_on"}
        answer["proxiable"] = _proxiable(record["type"], record["content"])
        answer["meta"] = {}
        if record.get("comment") is not None:
            answer["comment_modified_on"] = record.get("comment_modified_on")
        return answer

    def list_records(self, zone_id: str, query: Mapping[str, str],
                     path: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
        with self.store.lock:
            self._zone(zone_id, path)
            records = [r for r in self.store.records.values() if r["zone_id"] == zone_id]
        checks = _record_filters(query)
        if checks:
            combine = any if query.get("match") == "any" else all
            records = [r for r in records if combine(check(r) for check in checks)]
        search = (query.get("search") or "").lower()
        if search:
            records = [r for r in records
                       if any(search in str(r.get(k) or "").lower()
                              for k in ("name", "content", "comment"))]
        order = query.get("order")
        keys = (order,) if order in ("type", "name", "content", "ttl", "proxied") else ()
        records.sort(key=lambda r: tuple(r[k] for k in (*keys, "type", "name", "content")),
                     reverse=query.get("direction") == "desc")
        page, info = _paginate(records, query, RECORD_PER_PAGE)
        return [self.record_json(r) for r in page], info

    def get_record(self, zone_id: str, record_id: str, path: str) -> dict[str, Any]:
        with self.store.lock:
            return self.record_json(self._record(zone_id, record_id, path))

    def create_record(self, zone_id: str, body: Mapping[str, Any], path: str) -> dict[str, Any]:
        with self.store.lock:
            zone = self._zone(zone_id, path)
            fields = self._validated(zone, body, None)
            stamp = now()
            record = {"id": new_id(), "zone_id": zone_id, "zone_name": zone["name"],
                      **fields, "created_on": stamp, "modified_on": stamp}
            if record["comment"] is not None:
                record["comment_modified_on"] = stamp
            self.store.records[record["id"]] = record
            self.store.save()
            return self.record_json(record)

    def update_record(self, zone_id: str, record_id: str, body: Mapping[str, Any],
                      path: str, replace: bool) -> dict[str, Any]:
        """PUT (``replace``) overwrites every field; PATCH keeps the ones not sent."""
        with self.store.lock:
            zone = self._zone(zone_id, path)
            record = self._record(zone_id, record_id, path)
            merged = dict(body) if replace else {**_editable(record), **body}
            fields = self._validated(zone, merged, record_id)
            if fields == _editable(record):
                return self.record_json(record)
            stamp = now()
            if fields["comment"] != record.get("comment"):
                record["comment_modified_on"] = stamp
            record.update(fields, modified_on=stamp)
            self.store.save()
            return self.record_json(record)

    def delete_record(self, zone_id: str, record_id: str, path: str) -> dict[str, str]:
        with self.store.lock:
            self._record(zone_id, record_id, path)
            del self.store.records[record_id]
            self.store.save()
            return {"id": record_id}

    def _record(self, zone_id: str, record_id: str, path: str) -> dict[str, Any]:
        self._zone(zone_id, path)
        if not re.fullmatch(r"[0-9a-f]{32}", record_id):
            raise errors.no_route(path)
        record = self.store.records.get(record_id)
        if record is None or record["zone_id"] != zone_id:
            raise errors.record_not_found()
        return record

    # validation ----------------------------------------------------------------------

    def _validated(self, zone: Mapping[str, Any], body: Mapping[str, Any],
                   own_id: str | None) -> dict[str, Any]:
        """The stored fields for ``body``, or Cloudflare's error for the first problem."""
        record_type = body.get("type")
        if record_type is None:
            raise errors.dns_validation(
                f"type is required, one of {', '.join(SUPPORTED_TYPES)}")
        if record_type not in SUPPORTED_TYPES:
            raise errors.dns_validation(
                f"type {record_type!r} is not supported by the casera emulator "
                f"(supported: {', '.join(SUPPORTED_TYPES)})")
        name = fully_qualified(body.get("name"), zone["name"])
        content = _content(record_type, body.get("content"), name)
        proxied = body.get("proxied", False)
        if proxied is None:
            proxied = False
        if not isinstance(proxied, bool):
            raise errors.validation(9003, "Invalid 'proxied' value, must be a boolean")
        ttl = body.get("ttl", 1)
        if ttl is None:
            ttl = 1
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) \
                or not math.isfinite(ttl) or ttl != int(ttl) \
                or not (ttl == 1 or 60 <= ttl <= 86400):
            raise errors.validation(
                9021, "Invalid TTL. Must be between 60 and 86400 seconds, or 1 for automatic")
        if proxied:
            if record_type == "TXT":
                raise errors.validation(9004, "This record type cannot be proxied.")
            if record_type in ADDRESS_TYPES and not self.allow_private_proxied \
                    and not _routable(content):
                raise errors.validation(9003,
                                        f"Target {content} is not allowed for a proxied record.")
            ttl = 1  # proxied records are always "automatic"
        comment = body.get("comment")
        if comment is not None and not isinstance(comment, str):
            raise errors.dns_validation("comment must be a string")
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise errors.dns_validation("tags must be a list of 'name:value' strings")
        settings = body.get("settings") or {}
        if not isinstance(settings, dict):
            raise errors.dns_validation("settings must be an object")
        self._check_conflicts(zone["id"], record_type, name, content, own_id)
        return {"name": name, "type": record_type, "content": content, "proxied": proxied,
                "ttl": int(ttl), "comment": comment or None, "tags": tags,
                "settings": settings}

    def _check_conflicts(self, zone_id: str, record_type: str, name: str, content: str,
                         own_id: str | None) -> None:
        same_name = [r for r in self.store.records.values()
                     if r["zone_id"] == zone_id and r["name"] == name and r["id"] != own_id]
        if any(r["type"] == record_type and r["content"] == content for r in same_name):
            raise errors.identical_record()
        if record_type == "CNAME" and any(r["type"] in (*ADDRESS_TYPES, "CNAME")
                                          for r in same_name):
            raise errors.host_taken_for_cname()
        if record_type in ADDRESS_TYPES and any(r["type"] == "CNAME" for r in same_name):
            raise errors.cname_exists()


def fully_qualified(name: object, zone: str) -> str:
    """Cloudflare's reading of a record name: "@" is the apex, a trailing dot is dropped,
    anything not already under the zone gets the zone appended."""
    if not isinstance(name, str) or not name.strip():
        raise errors.dns_validation("DNS record name is required")
    fqdn = name.strip().lower().rstrip(".")
    if fqdn in ("@", ""):
        fqdn = zone
    elif fqdn != zone and not fqdn.endswith("." + zone):
        fqdn = f"{fqdn}.{zone}"
    if len(fqdn) > 253 or not all(LABEL.match(label) for label in fqdn.split(".")):
        raise errors.dns_validation(f"DNS name is invalid: {name}")
    return fqdn


def _content(record_type: str, content: object, name: str) -> str:
    text = content.strip() if isinstance(content, str) else ""
    if record_type == "A":
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise errors.validation(
                9005, "Content for A record must be a valid IPv4 address.") from None
    if record_type == "AAAA":
        try:
            return ipaddress.IPv6Address(text).compressed
        except ValueError:
            raise errors.validation(  # code: guess
                9006, "Content for AAAA record must be a valid IPv6 address.") from None
    if record_type == "CNAME":
        target = text.lower().rstrip(".")
        if not target or target == name or len(target) > 253 \
                or not all(LABEL.match(label) for label in target.split(".")):
            raise errors.validation(9007, "Content for CNAME record is invalid.")  # code: guess
        return target
    if not text or len(text) > 2048:
        raise errors.dns_validation("Content for TXT record is invalid (1 to 2048 characters).")
    return content if isinstance(content, str) else text


def _routable(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not any(ip in network for network in UNPROXIABLE_NETWORKS
                   if network.version == ip.version)


def _proxiable(record_type: str, content: str) -> bool:
    if record_type in ADDRESS_TYPES:
        return _routable(content)
    return record_type == "CNAME"


def _editable(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("name", "type", "content", "proxied", "ttl",
                                       "comment", "tags", "settings")}


def _name_filter(value: str) -> Callable[[str], bool]:
    """The zones list's ``name`` filter: "operator:value" or a plain (equal) value."""
    operator, _, rest = value.partition(":")
    tests: dict[str, Callable[[str, str], bool]] = {
        "equal": lambda have, want: have == want,
        "not_equal": lambda have, want: have != want,
        "starts_with": str.startswith, "ends_with": str.endswith,
        "contains": lambda have, want: want in have,
    }
    if rest and operator in tests:
        want = rest.lower()
        return lambda have: tests[operator](have.lower(), want)
    want = value.lower().rstrip(".")
    return lambda have: have == want


def _record_filters(query: Mapping[str, str]) -> list[Callable[[Mapping[str, Any]], bool]]:
    """Filters of the records list. The SDK sends nested ones with dots (``name.exact``)."""
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    operators: dict[str, Callable[[str, str], bool]] = {
        "exact": lambda have, want: have == want,
        "contains": lambda have, want: want in have,
        "startswith": str.startswith, "endswith": str.endswith,
    }
    for field in ("name", "content", "comment"):
        for key, value in query.items():
            if key == field:
                op = "exact"
            elif key.startswith(field + "."):
                op = key.split(".", 1)[1]
            else:
                continue
            if field == "comment" and op in ("present", "absent"):
                wanted = op == "present"
                checks.append(lambda r, w=wanted: (r.get("comment") is not None) == w)
                continue
            if op not in operators:
                raise errors.dns_validation(f"unknown filter {key}")
            want = value.lower().rstrip(".") if field == "name" else value.lower()
            test = operators[op]
            checks.append(lambda r, f=field, w=want, t=test:
                          t(str(r.get(f) or "").lower(), w))
    wanted_type = (query.get("type") or "").upper()
    if wanted_type:
        checks.append(lambda r: r["type"] == wanted_type)
    if query.get("proxied") in ("true", "false"):
        wanted_proxied = query["proxied"] == "true"
        checks.append(lambda r: r["proxied"] is wanted_proxied)
    return checks


def _paginate(items: list[dict[str, Any]], query: Mapping[str, str],
              limits: tuple[int, int, int]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    low, high, default = limits
    try:
        page = max(1, int(float(query.get("page") or 1)))
        per_page = int(float(query.get("per_page") or default))
    except (ValueError, OverflowError):  # "abc", "nan", "1e400"
        raise errors.validation(1001, "page and per_page must be numbers") from None  # guess
    # Clamped: the reference gives the range but not what an out-of-range value gets.
    per_page = min(max(per_page, low), high)
    start = (page - 1) * per_page
    chunk = items[start:start + per_page]
    return chunk, {"page": page, "per_page": per_page, "count": len(chunk),
                   "total_count": len(items),
                   "total_pages": math.ceil(len(items) / per_page)}
