"""The Hetzner servers: ``hetzner.server_count`` of them, named ``<name_prefix>-N``, with the
cluster label; each made with its own SSH host key, pinned at once in
``params/<env>.known_hosts``, and the cloud-init user data that hardens SSH.

Servers are found by the cluster label, never by remembered ids, so a replayed create
(hcloud-python retries POSTs on rate limits) or a half-finished earlier run converges instead
of duplicating.
"""

from __future__ import annotations

from casera.context import RunContext
from casera.errors import StepFailed
from casera.params import Params
from casera.plan import Plan, apply
from casera.progress import wait_for
from casera.providers import hetzner, ssh
from casera.providers.hetzner import Server, ServerSpec
from casera.result import StepResult, timed
from casera.steps.ssh_key import operator_public_key


def server_addresses(ctx: RunContext) -> dict[str, str]:
    """name -> public IPv4 of the environment's servers (by label), in params order."""
    found = {s.name: s.ipv4 for s in
             hetzner.for_env(ctx.params, ctx.secrets).servers.list(ctx.params.cluster_label)
             if s.ipv4}
    return {name: found[name] for name in ctx.params.server_names() if name in found}


def booted_this_run(ctx: RunContext) -> set[str]:
    """Names of the servers this run created or powered on: they may still be booting, so
    their silence on SSH is never taken for death."""
    return set(ctx.shared.get("servers_booted", ()))


def reset_server(ctx: RunContext, name: str, timeout: float = 300) -> None:
    """A hard reset through the API (like pulling the plug; the disk stays), waited for."""
    hz = hetzner.for_env(ctx.params, ctx.secrets)
    server = hz.servers.get(name)
    if server is None:
        raise StepFailed(f"server {name} is not in the Hetzner project; it cannot be reset. "
                         "Fix: run the servers step (steps.servers.ensure_servers) first")
    hetzner.wait_for([hz.servers.reset(server)], f"reset of {name}", timeout)


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
    is off is powered on. Servers with the label beyond the count are reported, never deleted
    here.
    """
    p = ctx.params
    with timed(StepResult("servers", p.cluster_label, dry_run=ctx.dry_run)) as result:
        hz = hetzner.for_env(p, ctx.secrets)
        existing = {s.name: s for s in hz.servers.list(p.cluster_label)}
        wanted = p.server_names()
        missing = [name for name in wanted if name not in existing]
        stopped = [existing[n] for n in wanted if n in existing and existing[n].status == "off"]
        extra = sorted(set(existing) - set(wanted))
        known = ssh.KnownHosts.for_env(p.env)
        # Read in a dry run too: a missing operator key fails the plan as it would the run.
        public_key = operator_public_key(p) if missing else ""
        plan = Plan()
        for name in missing:
            plan.add(f"+ server {name} ({p.hetzner.server_type}, {p.hetzner.image}, "
                     f"{p.hetzner.location}), its new host key pinned in {known.path.name}",
                     lambda n=name: _create_server(hz, p, n, public_key, known))
        for server in stopped:
            plan.add(f"~ server {server.name}: power on (was off)",
                     lambda s=server: hz.servers.power_on(s))
        for name in extra:
            plan.show(f"! server {name} has the label but is beyond server_count; left alone")
        if not plan:
            result.reason = f"{len(wanted)} servers exist and run"
        applied = apply(ctx, result, plan)
        if applied.dry_run:
            ctx.planned["servers"] = missing
            return result
        ctx.shared.setdefault("servers_booted", []).extend(
            missing + [server.name for server in stopped])
        hetzner.wait_for(applied.made, "server actions", timeout)
        now = _wait_running(hz, p, timeout) if plan else existing
        for name in wanted:
            server = now.get(name)
            result.check(name, server is not None and server.status == "running"
                         and server.ipv4 is not None,
                         f"{server.status}, {server.ipv4 or 'no public IPv4'}" if server
                         else "missing")
    return result


def _create_server(hz: hetzner.Hetzner, params: Params, name: str, public_key: str,
                   known: ssh.KnownHosts) -> hetzner.Action | None:
    """Create one server with a host key made here, and pin that key at once: the server is
    ours, so its key is trusted from the start and never learnt from the network."""
    h = params.hetzner
    host_key = ssh.new_host_key(name)
    created = hz.servers.create_or_get(ServerSpec(
        name=name, server_type=h.server_type, image=h.image, location=h.location,
        ssh_key_name=h.ssh_key_name, user_data=render_user_data(params, public_key, host_key),
        labels=dict(h.labels)))
    if created.existed:
        # A retried POST that had already succeeded (hcloud-python replays the same body, so
        # the same key): the server exists, pin its key and wait for it. If another run made
        # it, the key differs and the first SSH contact stops with the node named.
        if created.server.ipv4:
            known.pin(name, created.server.ipv4, params.ssh.port, [host_key.public])
        return None
    if created.server.ipv4 is None:
        raise StepFailed(f"server {name} was created without a public IPv4; its host key "
                         "cannot be pinned. Fix: create servers with a public IPv4 (the "
                         "runbook reaches them over it)")
    known.pin(name, created.server.ipv4, params.ssh.port, [host_key.public])
    return created.action


def _wait_running(hz: hetzner.Hetzner, params: Params, timeout: float) -> dict[str, Server]:
    def all_running() -> dict[str, Server] | None:
        found = {s.name: s for s in hz.servers.list(params.cluster_label)}
        ready = {n: found[n] for n in params.server_names()
                 if n in found and found[n].status == "running"}
        return ready if len(ready) == len(params.server_names()) else None

    return wait_for(f"{params.hetzner.server_count} servers running", all_running, timeout)
