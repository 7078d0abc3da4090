"""SSH access to the nodes: wait until the hardened SSH answers, then prove the hardening.

cloud-init moves SSH to ``ssh.port``, creates the admin user and turns off root and password
logins; these steps do not trust that it ran, they check each effect, from outside the node
wherever that can be done: real login attempts that must be refused, and TCP probes of every
port sshd was seen to listen on. Every connection checks the node's pinned host key
(``providers.ssh.KnownHosts``); a changed key stops the step with the node named.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
from concurrent.futures import ThreadPoolExecutor

import paramiko

from casera.context import RunContext
from casera.errors import WaitTimeout
from casera.gate import confirm
from casera.progress import wait_for
from casera.providers import ssh
from casera.result import StepResult, timed
from casera.steps.servers import reset_server, server_addresses

EXPECTED_SSHD = {"permitrootlogin": "no", "passwordauthentication": "no",
                 "kbdinteractiveauthentication": "no"}
# Methods that would let someone in without the operator's key.
PASSWORD_METHODS = {"password", "keyboard-interactive", "none"}
# Socket activation (Ubuntu 24.04): sshd may sit behind systemd's ssh.socket; `ss` then names
# sshd among the socket's holders once it runs, and it runs while we are logged in.
LISTENERS_COMMAND = "sudo ss -Hltnp"


def known_hosts(ctx: RunContext) -> ssh.KnownHosts:
    return ssh.KnownHosts.for_env(ctx.params.env)


def node_addresses(ctx: RunContext) -> dict[str, str]:
    """name -> IPv4 for the environment's servers, in params order."""
    return server_addresses(ctx)


def _admin_ssh_ok(ctx: RunContext, name: str, ip: str) -> str | ssh.HostKeyError | None:
    """cloud-init's status and the admin's groups; a HostKeyError is returned, not raised,
    so that wait_for (which retries on exceptions) stops at once on it."""
    s = ctx.params.ssh
    try:
        with ssh.connect(ip, s.port, s.admin_user, s.private_key_file, s.connect_timeout_s,
                         known_hosts=known_hosts(ctx), node=name) as conn:
            # cloud-init finishes after sshd restarts: wait for it while it runs, so later
            # steps see its work. Never `--wait` otherwise: on a node where it will not run
            # this boot ("not run") it waits forever.
            return ssh.run(conn, "case $(cloud-init status) in *running*) "
                           "timeout 120 cloud-init status --wait >/dev/null 2>&1;; esac; "
                           "cloud-init status | tail -n1; id -nG") or None
    except ssh.HostKeyError as exc:
        return exc


def _wait_admin(ctx: RunContext, what: str, name: str, ip: str, timeout: float) -> str:
    answer = wait_for(what, lambda: _admin_ssh_ok(ctx, name, ip), timeout)
    if isinstance(answer, ssh.HostKeyError):
        raise answer
    return answer


def wait_for_ssh(ctx: RunContext, patience: float = 120, timeout: float = 300) -> StepResult:
    """Every server answers SSH as the admin user on ``ssh.port`` with the operator's key,
    and shows the host key pinned for it.

    A server that has not answered within ``patience`` seconds (a crashed or hung node, which
    the API still calls "running") gets a hard reset through the API, behind the approval
    gate, and one more ``timeout`` to come back; after that the step fails and says so. A
    server that answers with another host key is never reset: the step stops and names it.
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
                answer = _wait_admin(ctx, what, name, ip, 60 if ctx.dry_run else patience)
            except WaitTimeout:
                result.changed += 1
                result.diff.append(f"~ server {name}: hard reset (no SSH for {patience:.0f} s)")
                if ctx.dry_run:
                    result.check(f"{name} ssh", False, "not answering; a real run resets it")
                    continue
                confirm(ctx, f"Reset server {name}", [f"~ {name} ({ip}): hard reset, like "
                                                      "pulling the plug; data on disk stays"])
                reset_server(ctx, name)
                answer = _wait_admin(ctx, f"{what} after a reset", name, ip, timeout)
            status, _, groups = answer.partition("\n")
            result.check(f"{name} cloud-init done", "error" not in status,
                         f"{ip}:{s.port}, pinned host key, {status.strip()}")
            result.check(f"{name} admin in docker group", "docker" in groups.split(),
                         f"{s.admin_user} groups: {groups.strip()}")
    return result


def _password_refused(known: ssh.KnownHosts, name: str, ip: str, port: int, user: str,
                      timeout: float) -> tuple[bool, str]:
    """Try a real password login with a random password. Refused *by method* is the good
    outcome: sshd answers that passwords are not allowed at all, whereas a "wrong password"
    answer means it would take the right one."""
    with socket.create_connection((ip, port), timeout=timeout) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=timeout)
            ssh.check_transport(known, transport, ip, port, name)
            try:
                transport.auth_password(user, secrets.token_urlsafe(18))
            except paramiko.BadAuthenticationType as exc:
                offered = list(exc.allowed_types)
                bad = PASSWORD_METHODS & set(offered)
                if bad:
                    return False, f"sshd still offers {', '.join(sorted(bad))} to {user}"
                return True, (f"password for {user} refused by method: sshd offers only "
                              f"{', '.join(offered)}")
            except paramiko.AuthenticationException:
                return False, f"sshd ASKED for {user}'s password (wrong one refused only)"
            return False, f"a random password for {user} was ACCEPTED"
        finally:
            transport.close()


def _login_refused(known: ssh.KnownHosts, name: str, ip: str, port: int, user: str,
                   timeout: float, key_file: str) -> str | None:
    """None when a login with a valid key is refused (the good outcome); else what happened."""
    client = ssh.pinned_client(known, ip, port, name)
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


def probe_port(ip: str, port: int, timeout: float) -> tuple[bool, str]:
    """(answers, what happened) for a TCP connect from here. Answering with anything counts
    as open; "refused" (nothing listens) and "no answer" (a firewall drops it, as Hetzner's
    does) both count as closed, and the detail says which."""
    try:
        with socket.create_connection((ip, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            try:
                banner = sock.recv(64).decode(errors="replace").strip()
            except OSError:
                banner = ""
            return True, f"OPEN{': ' + banner if banner else ''}"
    except ConnectionRefusedError:
        return False, "refused"
    except TimeoutError:
        return False, f"no answer in {timeout:.0f} s (filtered)"
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return False, f"unreachable ({exc.strerror})"
        raise


def sshd_ports(sshd_t: str) -> set[int]:
    """Every ``port`` line of ``sshd -T`` (sshd listens on each; Port lines add up)."""
    return {int(v) for k, _, v in (line.partition(" ") for line in sshd_t.splitlines())
            if k == "port" and v.strip().isdigit()}


def listening_ports(ss_output: str, process: str = "sshd") -> set[int]:
    """Ports of the TCP listeners ``ss -Hltnp`` shows held by ``process``."""
    ports = set()
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 4 or f'(("{process}"' not in line and f'("{process}"' not in line:
            continue
        match = re.search(r":(\d+)$", fields[3])
        if match:
            ports.add(int(match.group(1)))
    return ports


def verify_ssh_hardening(ctx: RunContext) -> StepResult:
    """sshd's settings say no root, no passwords; sshd listens on ``ssh.port`` and nothing
    else; and from here: port 22 and every other port sshd had do not answer, a root login
    with the operator's valid key is refused, and a password login is refused by method."""
    s = ctx.params.ssh
    known = known_hosts(ctx)
    key_file = os.path.expanduser(s.private_key_file)
    probe_timeout = min(s.connect_timeout_s, 3.0)
    with timed(StepResult("ssh hardening", f"{len(ctx.params.server_names())} nodes",
                          dry_run=ctx.dry_run)) as result:
        nodes = node_addresses(ctx)
        if ctx.dry_run and not nodes:
            result.reason = "no servers yet: nothing to check"
            return result
        inside: dict[str, tuple[str, str]] = {}
        for name, ip in nodes.items():
            with ssh.connect(ip, s.port, s.admin_user, s.private_key_file, s.connect_timeout_s,
                             known_hosts=known, node=name) as conn:
                inside[name] = (ssh.run(conn, "sudo sshd -T"), ssh.run(conn, LISTENERS_COMMAND))
        # Every port sshd is configured for or was seen on, plus 22, probed from here at once:
        # a firewall drops rather than refuses, and waiting node by node would add up.
        to_probe = {(name, port) for name, (sshd_t, ss_out) in inside.items()
                    for port in (sshd_ports(sshd_t) | listening_ports(ss_out) | {22}) - {s.port}}
        with ThreadPoolExecutor(max(1, min(8, len(to_probe)))) as pool:
            probes = dict(zip(sorted(to_probe), pool.map(
                lambda np: probe_port(nodes[np[0]], np[1], probe_timeout), sorted(to_probe)),
                strict=True))
        for name, ip in nodes.items():
            sshd_t, ss_out = inside[name]
            configured, listening = sshd_ports(sshd_t), listening_ports(ss_out)
            result.check(f"{name} sshd ports", configured == {s.port},
                         f"sshd -T: port {', '.join(map(str, sorted(configured))) or 'none'}")
            result.check(f"{name} sshd listens only on {s.port}", listening == {s.port},
                         "listening (ss): " + (", ".join(map(str, sorted(listening)))
                                               or "nothing held by sshd"))
            effective = dict(line.split(" ", 1) for line in sshd_t.splitlines() if " " in line)
            wrong = {k: effective.get(k) for k, v in EXPECTED_SSHD.items()
                     if effective.get(k) != v}
            result.check(f"{name} sshd settings", not wrong,
                         ", ".join(f"{k} {v}" for k, v in EXPECTED_SSHD.items())
                         if not wrong else f"expected no, got {wrong}")
            for (node, port), (answers, detail) in sorted(probes.items()):
                if node == name:
                    result.check(f"{name} port {port} closed from outside", not answers,
                                 f"{ip}:{port} {detail}")
            # Hetzner puts the operator's key in root's authorized_keys: only sshd's
            # PermitRootLogin stands between that key and a root shell.
            root = _login_refused(known, name, ip, s.port, "root", s.connect_timeout_s,
                                  key_file)
            result.check(f"{name} root login refused", root is None,
                         root or "root with the operator's valid key: refused")
            for user in dict.fromkeys((s.admin_user, "root")):
                refused, detail = _password_refused(known, name, ip, s.port, user,
                                                    s.connect_timeout_s)
                result.check(f"{name} password login refused ({user})", refused, detail)
    return result
