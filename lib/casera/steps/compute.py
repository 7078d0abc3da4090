"""Hetzner compute: the operator's SSH key, the Cloud Firewall and the servers.

Every step reads what exists first (by name or by the cluster label, never by remembered ids),
so a replayed POST (hcloud-python retries POSTs on rate limits) or a half-finished earlier run
converges instead of duplicating.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hcloud import APIException, Client
from hcloud.firewalls import (
    Firewall,
    FirewallResource,
    FirewallResourceLabelSelector,
    FirewallRule,
)
from hcloud.images import Image
from hcloud.locations import Location
from hcloud.server_types import ServerType
from hcloud.servers import BoundServer
from hcloud.ssh_keys import SSHKey
from tqdm import tqdm

from casera.context import RunContext
from casera.errors import StepFailed
from casera.gate import confirm
from casera.params import Params
from casera.providers import hetzner, ssh
from casera.result import StepResult, timed

ANYWHERE = ["0.0.0.0/0", "::/0"]


def hcloud_client(ctx: RunContext) -> Client:
    return hetzner.client(ctx.params.hetzner.api_endpoint, ctx.secrets.get("hcloud_token"))


def _public_key(params: Params) -> str:
    path = Path(params.hetzner.ssh_public_key_file).expanduser()
    if not path.exists():
        raise StepFailed(f"hetzner.ssh_public_key_file: {path} does not exist; create the "
                         f"operator key (ssh-keygen -t ed25519 -f {str(path)[:-4]}) or fix "
                         f"the path in params/{params.env}.yaml")
    return path.read_text().strip()


def ensure_ssh_key(ctx: RunContext) -> StepResult:
    """The operator's public key in the Hetzner project, under ``hetzner.ssh_key_name``."""
    p = ctx.params.hetzner
    with timed(StepResult("ssh key", p.ssh_key_name, dry_run=ctx.dry_run)) as result:
        public_key = _public_key(ctx.params)
        api = hcloud_client(ctx)
        found = api.ssh_keys.get_by_name(p.ssh_key_name)
        if found is not None:
            same = found.public_key.split()[:2] == public_key.split()[:2]
            result.reason = "exists with this key" if same else "exists with ANOTHER key"
            result.check("key matches the operator's", same,
                         found.fingerprint if same else
                         f"project key {found.fingerprint} differs from {p.ssh_public_key_file}; "
                         "rename or delete the old key in the Hetzner console")
            return result
        result.changed, result.diff = 1, [f"+ ssh key {p.ssh_key_name}"]
        if ctx.dry_run:
            return result
        try:
            created = api.ssh_keys.create(name=p.ssh_key_name, public_key=public_key,
                                          labels=dict(p.labels))
        except APIException as exc:
            if exc.code != "uniqueness_error":  # a retried POST that had already succeeded
                raise
            created = api.ssh_keys.get_by_name(p.ssh_key_name)
        result.check("key present", created is not None, getattr(created, "fingerprint", ""))
    return result


def server_ips(api: Client, params: Params) -> dict[str, str]:
    """name -> public IPv4 of this environment's servers (by label)."""
    return {srv.name: srv.public_net.ipv4.ip
            for srv in api.servers.get_all(label_selector=params.cluster_label)
            if srv.public_net and srv.public_net.ipv4}


def desired_firewall_rules(params: Params, node_ips: list[str],
                           pending: list[str] | None = None) -> list[dict[str, Any]]:
    """The firewall as plain rule dicts; cluster rules only once there are nodes (Hetzner
    refuses a rule without sources), so bootstrap applies this again after the servers.

    ``pending`` names servers a dry run plans but whose addresses do not exist yet: their
    sources are shown as placeholders, like Terraform's "(known after apply)"."""
    rules = []
    for rule in params.firewall.rules:
        if rule.source == "anywhere":
            sources = ANYWHERE
        elif rule.source == "operators":
            sources = list(params.ssh.operator_cidrs)
        elif rule.source == "cluster":
            sources = [f"{ip}/32" for ip in sorted(node_ips)] + [
                f"<{name}: known after apply>" for name in pending or []]
        else:
            sources = list(rule.source)
        if not sources:
            continue
        rules.append({"direction": "in", "protocol": rule.protocol, "port": rule.port,
                      "source_ips": sources, "description": rule.description})
    return rules


def _rule_key(rule: dict[str, Any]) -> tuple[Any, ...]:
    return (rule["direction"], rule["protocol"], rule.get("port"),
            tuple(sorted(rule["source_ips"])))


def _describe_rule(rule: dict[str, Any]) -> str:
    port = f" {rule['port']}" if rule.get("port") else ""
    sources = rule["source_ips"]
    src = "anywhere" if sorted(sources) == sorted(ANYWHERE) else ", ".join(sources)
    return f"in {rule['protocol']}{port} from {src} ({rule['description']})"


def ensure_firewall(ctx: RunContext) -> StepResult:
    """Hetzner Cloud Firewall ``firewall.name`` with exactly the params' rules, applied by the
    cluster label so every new server gets it."""
    p = ctx.params
    with timed(StepResult("firewall", p.firewall.name, dry_run=ctx.dry_run)) as result:
        api = hcloud_client(ctx)
        existing = server_ips(api, p)
        ips = list(existing.values())
        # A dry run plans against what its earlier steps would have made: servers planned by
        # ensure_servers, and this firewall as its first application would have created it.
        pending = [n for n in ctx.planned.get("servers", []) if n not in existing]
        desired = desired_firewall_rules(p, ips, pending if ctx.dry_run else None)
        selector = FirewallResource(type="label_selector", label_selector=(
            FirewallResourceLabelSelector(selector=p.cluster_label)))
        found = api.firewalls.get_by_name(p.firewall.name)
        rules = [FirewallRule(direction=r["direction"], protocol=r["protocol"], port=r["port"],
                              source_ips=r["source_ips"], description=r["description"])
                 for r in desired]
        planned = ctx.planned.get("firewall") if ctx.dry_run else None
        if found is None and planned is None:
            result.changed = 1 + len(desired)
            result.diff += ["+ firewall " + p.firewall.name,
                            f"+ applied to label {p.cluster_label}"]
            result.diff += ["+ " + _describe_rule(r) for r in desired]
            if ctx.dry_run:
                ctx.planned["firewall"] = desired
            else:
                response = api.firewalls.create(name=p.firewall.name, rules=rules,
                                                labels=dict(p.hetzner.labels),
                                                resources=[selector])
                for action in response.actions or []:
                    action.wait_until_finished()
            return _verify_firewall(api, p, desired, result)
        current = planned if found is None else [
            {"direction": r.direction, "protocol": r.protocol, "port": r.port,
             "source_ips": r.source_ips, "description": r.description}
            for r in found.rules or []]
        have, want = {_rule_key(r): r for r in current}, {_rule_key(r): r for r in desired}
        added = [want[k] for k in want if k not in have]
        removed = [have[k] for k in have if k not in want]
        result.diff += ["+ " + _describe_rule(r) for r in added]
        result.diff += ["- " + _describe_rule(r) for r in removed]
        applied = found is None or any(
            res.type == "label_selector" and res.label_selector and
            res.label_selector.selector == p.cluster_label for res in found.applied_to or [])
        if not applied:
            result.diff.append(f"+ applied to label {p.cluster_label}")
        result.changed = len(added) + len(removed) + (0 if applied else 1)
        if not result.changed:
            result.reason = "rules and label selector as params say"
        if ctx.dry_run:
            ctx.planned["firewall"] = desired
            return result
        if not result.changed:
            return _verify_firewall(api, p, desired, result)
        if removed:
            confirm(ctx, f"Firewall {p.firewall.name}: remove {len(removed)} rule(s)",
                    ["- " + _describe_rule(r) for r in removed])
        if added or removed:
            for action in api.firewalls.set_rules(Firewall(id=found.id), rules):
                action.wait_until_finished()
        if not applied:
            for action in api.firewalls.apply_to_resources(Firewall(id=found.id), [selector]):
                action.wait_until_finished()
        result.reason = f"{len(added)} rule(s) added, {len(removed)} removed"
        return _verify_firewall(api, p, desired, result)
    return result


def _verify_firewall(api: Client, params: Params, desired: list[dict[str, Any]],
                     result: StepResult) -> StepResult:
    if result.dry_run:
        return result
    found = api.firewalls.get_by_name(params.firewall.name)
    have = {_rule_key({"direction": r.direction, "protocol": r.protocol, "port": r.port,
                       "source_ips": r.source_ips}) for r in (found.rules if found else [])}
    result.check("rules match params", have == {_rule_key(r) for r in desired},
                 f"{len(have)} inbound rules")
    if any(r["protocol"] == "esp" for r in desired):
        result.check("ESP between nodes allowed", any(k[1] == "esp" for k in have),
                     "IP protocol 50 from the nodes (the encrypted overlay needs it)")
    else:
        result.diff.append("  no servers yet: ESP and the other cluster rules come after them")
    return result


def render_user_data(params: Params, public_key: str, host_key: ssh.HostKey) -> str:
    """cloud-init user data: the server's own SSH host key, an admin user in the docker group,
    SSH moved to ``ssh.port``, no password logins, no root login. The runbook verifies each of
    these afterwards. Holds a private key: goes to the Hetzner API only, never printed.

    Hetzner's ``docker-ce`` app image is Ubuntu 24.04 (rebased from 22.04: hetznercloud/apps
    #112), whose sshd is socket-activated: systemd's
    ``ssh.socket`` holds the listening socket and sshd ignores ``Port`` while it uses it. The
    socket's addresses come from sshd_config through ``sshd-socket-generator``, which runs only
    at boot and on ``systemctl daemon-reload``, so a new ``Port`` takes effect only after
    ``daemon-reload`` and ``restart ssh.socket`` (restarting ``ssh`` alone keeps port 22 open).
    Sources: discourse.ubuntu.com/t/sshd-now-uses-socket-based-activation-ubuntu-22-10-and-later
    /30189; willshersystems/ansible-sshd#307 (24.04 needs daemon-reload); systemd/systemd#36795
    (the generated /run/systemd/generator/ssh.socket.d/addresses.conf, ``RequiredBy=ssh.service``
    so restarting the socket restarts sshd too). Where ``ssh.socket`` is not active (Debian,
    an image that turned it off), restarting ``ssh`` is what applies the new port.
    """
    s = params.ssh
    private = host_key.private.reveal().strip().splitlines()
    # sshd -t first: a broken drop-in must not take SSH down (cloud-init then reports the
    # runcmd error in `cloud-init status`, which wait_for_ssh shows).
    apply_ssh = ("set -e; sshd -t; systemctl daemon-reload; "
                 "if systemctl is-active --quiet ssh.socket; "
                 "then systemctl restart ssh.socket; systemctl restart ssh; "
                 "else systemctl restart ssh; fi")
    return "\n".join([
        "#cloud-config",
        # cc_ssh deletes the image's host keys and writes exactly these (no others are
        # generated when ssh_keys is set): canonical/cloud-init cloudinit/config/cc_ssh.py.
        "ssh_deletekeys: true",
        "ssh_keys:",
        "  ed25519_private: |",
        *[f"    {line}" for line in private],
        f"  ed25519_public: {host_key.public}",
        "users:",
        f"  - name: {s.admin_user}",
        "    groups: [docker, sudo]",
        "    shell: /bin/bash",
        "    sudo: ALL=(ALL) NOPASSWD:ALL",
        "    lock_passwd: true",
        "    ssh_authorized_keys:",
        f"      - {public_key}",
        "ssh_pwauth: false",
        "disable_root: true",
        "write_files:",
        # 10-: sshd keeps the first value it reads for most keywords, and the drop-ins are
        # read in name order before sshd_config's own lines (Ubuntu's cloud images add
        # 50-cloud-init.conf / 60-cloudimg-settings.conf). Port is the exception: every
        # Port line adds one, which is why verify_ssh_hardening looks at all of them.
        "  - path: /etc/ssh/sshd_config.d/10-casera.conf",
        "    permissions: '0644'",
        "    content: |",
        f"      Port {s.port}",
        "      PermitRootLogin no",
        "      PasswordAuthentication no",
        "      KbdInteractiveAuthentication no",
        f"      AllowUsers {s.admin_user}",
        "runcmd:",
        f"  - [sh, -c, '{apply_ssh}']",
        "",
    ])


def ensure_servers(ctx: RunContext, timeout: float = 600) -> StepResult:
    """``hetzner.server_count`` servers named ``<name_prefix>-N`` with the cluster label.

    Missing servers are created together, then waited for together. A server that exists but
    is off is powered on; one that cannot be brought back is deleted and replaced (behind the
    approval gate). Servers with the label beyond the count are reported, never deleted here.
    """
    p = ctx.params
    with timed(StepResult("servers", p.cluster_label, dry_run=ctx.dry_run)) as result:
        api = hcloud_client(ctx)
        existing = {s.name: s for s in api.servers.get_all(label_selector=p.cluster_label)}
        wanted = p.server_names()
        missing = [name for name in wanted if name not in existing]
        stopped = [existing[n] for n in wanted if n in existing and existing[n].status == "off"]
        extra = sorted(set(existing) - set(wanted))
        result.diff += [f"+ server {n} ({p.hetzner.server_type}, {p.hetzner.image}, "
                        f"{p.hetzner.location}), its new host key pinned in "
                        f"{ssh.KnownHosts.for_env(p.env).path.name}" for n in missing]
        result.diff += [f"~ server {s.name}: power on (was off)" for s in stopped]
        result.diff += [f"! server {n} has the label but is beyond server_count; left alone"
                        for n in extra]
        result.changed = len(missing) + len(stopped)
        if not result.changed:
            result.reason = f"{len(wanted)} servers exist and run"
        if ctx.dry_run:
            ctx.planned["servers"] = missing
            return result
        actions = []
        public_key = _public_key(p)
        known = ssh.KnownHosts.for_env(p.env)
        for name in missing:
            actions.append(_create_server(api, p, name, public_key, known))
        for server in stopped:
            actions.append(api.servers.power_on(server))
        _wait_all(actions, "server actions", timeout)
        for name, server in _wait_running(api, p, timeout).items():
            ip = server.public_net.ipv4.ip if server.public_net.ipv4 else "?"
            result.check(name, server.status == "running", f"{server.status}, {ip}")
    return result


def _create_server(api: Client, params: Params, name: str, public_key: str,
                   known: ssh.KnownHosts) -> Any:
    """Create one server with a host key made here, and pin that key at once: the server is
    ours, so its key is trusted from the start and never learnt from the network."""
    h = params.hetzner
    host_key = ssh.new_host_key(name)
    try:
        response = api.servers.create(
            name=name, server_type=ServerType(name=h.server_type), image=Image(name=h.image),
            location=Location(name=h.location), ssh_keys=[SSHKey(name=h.ssh_key_name)],
            user_data=render_user_data(params, public_key, host_key), labels=dict(h.labels))
    except APIException as exc:
        if exc.code != "uniqueness_error":
            raise
        # A retried POST that had already succeeded (hcloud-python replays the same body, so
        # the same key): the server exists, pin its key and wait for it. If another run made
        # it, the key differs and the first SSH contact stops with the node named.
        server = api.servers.get_by_name(name)
        if server is not None and server.public_net and server.public_net.ipv4:
            known.pin(name, server.public_net.ipv4.ip, params.ssh.port, [host_key.public])
        return None
    server = response.server
    if server.public_net is None or server.public_net.ipv4 is None:
        raise StepFailed(f"server {name} was created without a public IPv4; its host key "
                         "cannot be pinned. Fix: create servers with a public IPv4 (the "
                         "runbook reaches them over it)")
    known.pin(name, server.public_net.ipv4.ip, params.ssh.port, [host_key.public])
    return response.action


def _wait_all(actions: list[Any], what: str, timeout: float) -> None:
    pending = [a for a in actions if a is not None]
    with tqdm(total=len(pending), desc=f"waiting for {what}", file=sys.stdout,
              leave=False) as bar:
        for action in pending:
            action.wait_until_finished(max_retries=int(timeout))
            bar.update(1)


def _wait_running(api: Client, params: Params, timeout: float) -> dict[str, BoundServer]:
    from casera.progress import wait_for

    def all_running() -> dict[str, BoundServer] | None:
        found = {s.name: s for s in api.servers.get_all(label_selector=params.cluster_label)}
        ready = {n: found[n] for n in params.server_names()
                 if n in found and found[n].status == "running"}
        return ready if len(ready) == len(params.server_names()) else None

    return wait_for(f"{params.hetzner.server_count} servers running", all_running, timeout)
