"""SSH access to the nodes: wait until the hardened SSH answers, then prove the hardening.

cloud-init moves SSH to ``ssh.port``, creates the admin user and turns off root and password
logins; these steps do not trust that it ran, they check each effect from outside
(``sshd -T`` on the node, and real login attempts that must be refused).
"""

from __future__ import annotations

import os
import socket

import paramiko

from casera.context import RunContext
from casera.errors import WaitTimeout
from casera.gate import confirm
from casera.progress import wait_for
from casera.providers import ssh
from casera.result import StepResult, timed
from casera.steps.compute import hcloud_client, server_ips

EXPECTED_SSHD = {"permitrootlogin": "no", "passwordauthentication": "no",
                 "kbdinteractiveauthentication": "no"}


def node_addresses(ctx: RunContext) -> dict[str, str]:
    """name -> IPv4 for the environment's servers, in params order."""
    ips = server_ips(hcloud_client(ctx), ctx.params)
    return {name: ips[name] for name in ctx.params.server_names() if name in ips}


def _admin_ssh_ok(ctx: RunContext, ip: str) -> str | None:
    s = ctx.params.ssh
    with ssh.connect(ip, s.port, s.admin_user, s.private_key_file, s.connect_timeout_s) as conn:
        # cloud-init finishes after sshd restarts: wait for it while it runs, so later steps
        # see its work. Never `--wait` otherwise: on a node where it will not run this boot
        # ("not run") it waits forever.
        return ssh.run(conn, "case $(cloud-init status) in *running*) "
                       "timeout 120 cloud-init status --wait >/dev/null 2>&1;; esac; "
                       "cloud-init status | tail -n1; id -nG") or None


def wait_for_ssh(ctx: RunContext, patience: float = 120, timeout: float = 300) -> StepResult:
    """Every server answers SSH as the admin user on ``ssh.port`` with the operator's key.

    A server that has not answered within ``patience`` seconds (a crashed or hung node, which
    the API still calls "running") gets a hard reset through the API, behind the approval
    gate, and one more ``timeout`` to come back; after that the step fails and says so.
    """
    s = ctx.params.ssh
    with timed(StepResult("ssh", f"{s.admin_user}@*:{s.port}", dry_run=ctx.dry_run)) as result:
        nodes = node_addresses(ctx)
        if ctx.dry_run and not nodes:
            result.reason = "no servers yet: nothing to reach"
            return result
        for name, ip in nodes.items():
            what = f"SSH as {s.admin_user} on {name} ({ip}:{s.port})"
            try:
                answer = wait_for(what, lambda ip=ip: _admin_ssh_ok(ctx, ip),
                                  60 if ctx.dry_run else patience)
            except WaitTimeout:
                result.changed += 1
                result.diff.append(f"~ server {name}: hard reset (no SSH for {patience:.0f} s)")
                if ctx.dry_run:
                    result.check(f"{name} ssh", False, "not answering; a real run resets it")
                    continue
                confirm(ctx, f"Reset server {name}", [f"~ {name} ({ip}): hard reset, like "
                                                      "pulling the plug; data on disk stays"])
                api = hcloud_client(ctx)
                api.servers.reset(api.servers.get_by_name(name)).wait_until_finished()
                answer = wait_for(f"{what} after a reset", lambda ip=ip: _admin_ssh_ok(ctx, ip),
                                  timeout)
            status, _, groups = answer.partition("\n")
            result.check(f"{name} ssh", True, f"{ip}:{s.port}, {status.strip()}")
            result.check(f"{name} admin in docker group", "docker" in groups.split(),
                         f"{s.admin_user} groups: {groups.strip()}")
    return result


def _auth_methods(ip: str, port: int, user: str, timeout: float) -> list[str]:
    """The authentication methods sshd offers ``user``: a wrong password is refused whether
    or not passwords are allowed, so this asks what is allowed instead of guessing one."""
    with socket.create_connection((ip, port), timeout=timeout) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=timeout)
            transport.auth_none(user)
        except paramiko.BadAuthenticationType as exc:
            return list(exc.allowed_types)
        finally:
            transport.close()
    return ["none"]


def _login_refused(ip: str, port: int, user: str, timeout: float, key_file: str) -> str | None:
    """None when a login with a valid key is refused (the good outcome); else what happened."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(ip, port=port, username=user, key_filename=key_file, allow_agent=False,
                       look_for_keys=False, timeout=timeout, banner_timeout=timeout,
                       auth_timeout=timeout)
    except paramiko.AuthenticationException:
        return None
    except (OSError, paramiko.SSHException) as exc:
        return f"unexpected {type(exc).__name__}: {exc}"
    finally:
        client.close()
    return "login ACCEPTED"


def verify_ssh_hardening(ctx: RunContext) -> StepResult:
    """``sshd -T`` says port, no root, no passwords; root and password logins are refused;
    the old port 22 no longer answers SSH from here."""
    s = ctx.params.ssh
    with timed(StepResult("ssh hardening", f"{len(ctx.params.server_names())} nodes",
                          dry_run=ctx.dry_run)) as result:
        nodes = node_addresses(ctx)
        if ctx.dry_run and not nodes:
            result.reason = "no servers yet: nothing to check"
            return result
        for name, ip in nodes.items():
            with ssh.connect(ip, s.port, s.admin_user, s.private_key_file,
                             s.connect_timeout_s) as conn:
                effective = dict(line.split(" ", 1) for line in
                                 ssh.run(conn, "sudo sshd -T").splitlines() if " " in line)
            ports = {v for k, v in effective.items() if k == "port"}
            result.check(f"{name} sshd port", ports == {str(s.port)},
                         f"port {effective.get('port')}")
            wrong = {k: effective.get(k) for k, v in EXPECTED_SSHD.items()
                     if effective.get(k) != v}
            result.check(f"{name} sshd settings", not wrong,
                         ", ".join(f"{k} {v}" for k, v in EXPECTED_SSHD.items())
                         if not wrong else f"expected no, got {wrong}")
            # Hetzner puts the operator's key in root's authorized_keys: only sshd's
            # PermitRootLogin stands between that key and a root shell.
            root = _login_refused(ip, s.port, "root", s.connect_timeout_s,
                                  os.path.expanduser(s.private_key_file))
            result.check(f"{name} root login refused", root is None, root or "refused")
            methods = _auth_methods(ip, s.port, s.admin_user, s.connect_timeout_s)
            result.check(f"{name} password login refused",
                         not {"password", "keyboard-interactive", "none"} & set(methods),
                         f"sshd offers only: {', '.join(methods)}")
    return result
