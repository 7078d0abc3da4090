"""Hetzner firewall rules to iptables: the translation alone (the enforcement itself is tested
on real nodes in test_nodes_localcloud.py)."""

from __future__ import annotations

import pytest

from casera.errors import CaseraError
from casera_localcloud.nodes import firewall


def rule(protocol: str, port: str | None, sources: list[str], direction: str = "in",
         description: str | None = None) -> dict:
    return {"direction": direction, "protocol": protocol, "port": port,
            "source_ips": sources, "destination_ips": [], "description": description}


def test_no_firewall_means_an_empty_chain_that_accepts_everything() -> None:
    script = firewall.firewall_script(None)
    assert ":CASERA-FIREWALL - [0:0]" in script
    assert "-j DROP" not in script
    assert "-I PREROUTING 1 -i eth0 -j CASERA-FIREWALL" in script


def test_empty_rule_list_drops_all_inbound_but_replies() -> None:
    script = firewall.firewall_script([])
    lines = script.splitlines()
    established = lines.index("-A CASERA-FIREWALL -m conntrack --ctstate ESTABLISHED,RELATED "
                              "-j RETURN")
    drop = next(i for i, line in enumerate(lines) if line.endswith("-j DROP"))
    assert established < drop


def test_protocols_ports_ranges_and_sources() -> None:
    lines = firewall.inbound_rule_lines([
        rule("tcp", "22", ["0.0.0.0/0", "::/0"], description="ssh"),
        rule("udp", "7946-7950", ["10.77.0.11/32", "10.77.0.12"]),
        rule("esp", None, ["10.77.0.11/32"]),
        rule("icmp", None, ["0.0.0.0/0"]),
        rule("gre", None, ["10.0.0.0/8"]),
        rule("tcp", "any", ["0.0.0.0/0"]),
        rule("tcp", "80", ["0.0.0.0/0"], direction="out"),
    ])
    assert lines == [
        '-A CASERA-FIREWALL -s 0.0.0.0/0 -p tcp --dport 22 -m comment --comment "ssh" '
        "-j RETURN",
        '-A CASERA-FIREWALL -s 10.77.0.11/32 -p udp --dport 7946:7950 -m comment --comment '
        '"udp 7946-7950" -j RETURN',
        '-A CASERA-FIREWALL -s 10.77.0.12/32 -p udp --dport 7946:7950 -m comment --comment '
        '"udp 7946-7950" -j RETURN',
        '-A CASERA-FIREWALL -s 10.77.0.11/32 -p esp -m comment --comment "esp" -j RETURN',
        '-A CASERA-FIREWALL -s 0.0.0.0/0 -p icmp -m comment --comment "icmp" -j RETURN',
        '-A CASERA-FIREWALL -s 10.0.0.0/8 -p gre -m comment --comment "gre" -j RETURN',
        '-A CASERA-FIREWALL -s 0.0.0.0/0 -p tcp -m comment --comment "tcp any" -j RETURN',
    ]


def test_descriptions_cannot_break_the_restore_file() -> None:
    (line,) = firewall.inbound_rule_lines([rule("tcp", "80", ["0.0.0.0/0"],
                                                description='web "front"\nCOMMIT')])
    assert line.count('"') == 2 and "\n" not in line


@pytest.mark.parametrize("bad", [
    rule("sctp", None, ["0.0.0.0/0"]),
    rule("tcp", "0", ["0.0.0.0/0"]),
    rule("tcp", "90-80", ["0.0.0.0/0"]),
    rule("tcp", "http", ["0.0.0.0/0"]),
    rule("icmp", "22", ["0.0.0.0/0"]),
    rule("tcp", "22", ["not-an-ip"]),
])
def test_invalid_rules_are_refused(bad: dict) -> None:
    with pytest.raises(CaseraError):
        firewall.inbound_rule_lines([bad])


def test_partition_keeps_the_gateway_and_heal_unhooks() -> None:
    script = firewall.partition_script("10.77.0.0/24", "10.77.0.1")
    assert script.index("-s 10.77.0.1 -j RETURN") < script.index("-s 10.77.0.0/24 -j DROP")
    assert script.index("-d 10.77.0.1 -j RETURN") < script.index("-d 10.77.0.0/24 -j DROP")
    heal = firewall.heal_script()
    assert "-D PREROUTING -i eth0 -j CASERA-PARTITION-IN" in heal
    assert "-D POSTROUTING -o eth0 -j CASERA-PARTITION-OUT" in heal
    assert "DROP" not in heal
