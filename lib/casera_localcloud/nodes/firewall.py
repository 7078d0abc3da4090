"""Hetzner firewall rules and network partitions as iptables rules inside a node.

Why the mangle table's PREROUTING and not filter INPUT: a Hetzner firewall sits outside the
server and filters everything that reaches its NIC, including ports that Docker publishes
(those are DNAT-ed to FORWARD and never pass INPUT). mangle PREROUTING sees every packet that
arrives on eth0 before Docker's DNAT, with conntrack state already known, and the node's own
dockerd never touches it, so its rule rewrites cannot reorder ours. DROP there is silent,
as on Hetzner (no RST/ICMP comes back).

The scripts are written to ``/etc/casera/`` in the node and run by its entrypoint at every
boot, so rules survive a power cycle as Hetzner's do.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from casera.errors import CaseraError

FIREWALL_CHAIN = "CASERA-FIREWALL"
PARTITION_IN_CHAIN = "CASERA-PARTITION-IN"
PARTITION_OUT_CHAIN = "CASERA-PARTITION-OUT"
FIREWALL_SCRIPT = "/etc/casera/firewall.sh"
PARTITION_SCRIPT = "/etc/casera/partition.sh"
NODE_INTERFACE = "eth0"
PROTOCOLS = {"tcp", "udp", "icmp", "esp", "gre"}

Rule = Mapping[str, Any]


def _port_match(protocol: str, port: str | None) -> list[str]:
    if port in (None, "", "any"):
        return []
    if protocol not in ("tcp", "udp"):
        raise CaseraError(f"firewall rule: a port ({port!r}) is only valid for tcp and udp, "
                          f"not {protocol}")
    low, _, high = str(port).partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise CaseraError(f"firewall rule: port {port!r} is neither N nor N-M") from None
    if not (1 <= first <= last <= 65535):
        raise CaseraError(f"firewall rule: port range {port!r} is outside 1-65535 or reversed")
    return ["--dport", f"{first}:{last}" if last != first else str(first)]


def _ipv4_sources(rule: Rule) -> list[str]:
    """IPv4 CIDRs of the rule. Nodes have no IPv6, so IPv6 sources can match nothing here."""
    sources = []
    for cidr in rule.get("source_ips") or []:
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise CaseraError(f"firewall rule: source {cidr!r} is not a CIDR") from None
        if network.version == 4:
            sources.append(str(network))
    return sources


def inbound_rule_lines(rules: Iterable[Rule]) -> list[str]:
    """iptables-restore lines for the ``in`` rules (``out`` rules are not enforced)."""
    lines = []
    for rule in rules:
        if rule.get("direction", "in") != "in":
            continue
        protocol = str(rule.get("protocol", "")).lower()
        if protocol not in PROTOCOLS:
            raise CaseraError(f"firewall rule: protocol {protocol!r} is not one of "
                              f"{sorted(PROTOCOLS)}")
        match = ["-p", protocol, *_port_match(protocol, rule.get("port"))]
        # iptables-restore understands only double quotes, and no escapes inside them.
        text = str(rule.get("description") or f"{protocol} {rule.get('port') or ''}")
        comment = '"' + re.sub(r'["\\\n]', " ", text)[:200].strip() + '"'
        for source in _ipv4_sources(rule):
            lines.append(" ".join(["-A", FIREWALL_CHAIN, "-s", source, *match,
                                   "-m", "comment", "--comment", comment, "-j", "RETURN"]))
    return lines


def _script(restore: list[str], hooks: list[tuple[str, str, str]], unhook: bool) -> str:
    """A shell script that loads ``restore`` atomically, then makes sure each hook is there
    (or gone, when ``unhook``). A hook is (table, chain, match-and-jump)."""
    body = ["#!/bin/sh", "# Written by casera_localcloud.nodes; re-run at every boot.", "set -e"]
    if restore:
        # --noflush keeps Docker's rules; the chain declaration empties just our chain, and
        # loading it in one transaction means no moment with the DROP but not the accepts.
        body.append("iptables-restore -w 5 --noflush <<'RULES'")
        body.extend(restore)
        body.append("RULES")
    for table, chain, rule in hooks:
        if unhook:
            body.append(f"while iptables -w 5 -t {table} -D {chain} {rule} 2>/dev/null; do :; done")
        else:
            body.append(f"iptables -w 5 -t {table} -C {chain} {rule} 2>/dev/null || "
                        f"iptables -w 5 -t {table} -I {chain} 1 {rule}")
    return "\n".join(body) + "\n"


def firewall_script(inbound_rules: list[Rule] | None) -> str:
    """The node's firewall. ``None``: no firewall applies, everything inbound is allowed.
    A list (even empty): as on Hetzner, inbound traffic not allowed by a rule is dropped;
    replies to the node's own connections and loopback are always allowed."""
    restore = ["*mangle", f":{FIREWALL_CHAIN} - [0:0]"]
    if inbound_rules is not None:
        restore.append(f"-A {FIREWALL_CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED "
                       "-j RETURN")
        restore.extend(inbound_rule_lines(inbound_rules))
        restore.append(f"-A {FIREWALL_CHAIN} -m comment --comment \"hetzner default: drop\" "
                       "-j DROP")
    restore.append("COMMIT")
    hook = ("mangle", "PREROUTING", f"-i {NODE_INTERFACE} -j {FIREWALL_CHAIN}")
    return _script(restore, [hook], unhook=False)


def partition_script(subnet: str, gateway: str) -> str:
    """Cut the node off from every other node of ``subnet`` but keep the gateway (the host:
    SSH for the operator, the registry), so the node stays up and reachable for the drill.

    raw PREROUTING drops what arrives from other nodes before conntrack can accept it as a
    reply; mangle POSTROUTING drops what leaves for them, including Swarm's VXLAN and
    gossip from the node's dockerd and traffic forwarded from its containers."""
    restore = [
        "*raw", f":{PARTITION_IN_CHAIN} - [0:0]",
        f"-A {PARTITION_IN_CHAIN} -s {gateway} -j RETURN",
        f"-A {PARTITION_IN_CHAIN} -s {subnet} -j DROP",
        "COMMIT",
        "*mangle", f":{PARTITION_OUT_CHAIN} - [0:0]",
        f"-A {PARTITION_OUT_CHAIN} -d {gateway} -j RETURN",
        f"-A {PARTITION_OUT_CHAIN} -d {subnet} -j DROP",
        "COMMIT",
    ]
    return _script(restore, _partition_hooks(), unhook=False)


def _partition_hooks() -> list[tuple[str, str, str]]:
    return [("raw", "PREROUTING", f"-i {NODE_INTERFACE} -j {PARTITION_IN_CHAIN}"),
            ("mangle", "POSTROUTING", f"-o {NODE_INTERFACE} -j {PARTITION_OUT_CHAIN}")]


def heal_script() -> str:
    """Undo ``partition_script``: unhook (the empty chains left behind match nothing)."""
    return _script([], _partition_hooks(), unhook=True)
