"""SSH access to the nodes: wait until the hardened SSH answers, then prove the hardening.

cloud-init moves SSH to ``ssh.port``, creates the admin user and turns off root and password
logins; these steps do not trust that it ran, they check each effect, from outside the node
wherever that can be done: real login attempts that must be refused, and TCP probes of every
port sshd was seen to listen on. Every connection checks the node's pinned host key
(``providers.ssh.KnownHosts``); a changed key stops the step with the node named.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from casera.context import RunContext
from casera.errors import WaitTimeout
from casera.plan import Plan, apply
from casera.progress import wait_for
from casera.providers import docker_swarm, ssh
from casera.result import StepResult, timed
from casera.steps.servers import booted_this_run, reset_server, server_addresses

EXPECTED_SSHD = {"permitrootlogin": "no", "passwordauthentication": "no",
                 "kbdinteractiveauthentication": "no"}
# Methods that would let someone in without the operator's key.
PASSWORD_METHODS = {"password", "keyboard-interactive", "none"}
# How long a node may be silent on SSH before the Swarm's view of it is asked for. Swarm marks
# a node down after missed heartbeats (5 s period, docs.docker.com/reference/cli/docker/swarm/
# init/#--dispatcher-heartbeat) and a manager unreachable when Raft cannot reach it: both settle
# within this time on a node that really died, and a slow boot is never judged by SSH alone.
DEAD_AFTER_S = 15.0
# Socket activation (Ubuntu 24.04): sshd may sit behind systemd's ssh.socket; `ss` then names
# sshd among the socket's holders once it runs, and it runs while we are logged in.
LISTENERS_COMMAND = "sudo ss -Hltnp"


def known_hosts(ctx: RunContext) -> ssh.KnownHosts:
    return ssh.KnownHosts.for_env(ctx.params.env)


def node_addresses(ctx: RunContext) -> dict[str, str]:
    """name -> IPv4 for the environment's servers, in params order."""
    return server_addresses(ctx)


T = TypeVar("T")
U = TypeVar("U")


def parallel(call: Callable[[T], U], items: list[T]) -> list[U]:
    """``call`` on every item at once (one thread each: the work is waiting on the network),
    results in the order of ``items``; the first exception is raised."""
    if not items:
        return []
    with ThreadPoolExecutor(min(16, len(items))) as pool:
        return list(pool.map(call, items))


def docker_pool(ctx: RunContext) -> docker_swarm.Pool:
    """The run's open Docker clients: every step of a run reuses them."""
    return ctx.shared.setdefault("docker", docker_swarm.Pool())


def dead_in_swarm(silent: list[str], swarm_nodes: list[dict[str, Any]],
                  booting: set[str]) -> dict[str, str]:
    """name -> why, for each silent server the Swarm reports dead: an entry under its hostname
    is ``down`` or an unreachable manager, and none is ready and reachable (a replaced server
    leaves a down entry beside its new one). A server this run created or powered on
    (``booting``) is never dead: it may still be booting while the Swarm still says down."""
    dead = {}
    for name in silent:
        if name in booting:
            continue
        entries = [n for n in swarm_nodes if n["hostname"] == name]
        alive = any(n["state"] == "ready" and n.get("reachability") in (None, "reachable")
                    for n in entries)
        bad = [f"{n['state']}" + (f", manager {n['reachability']}" if n.get("reachability")
                                  else "") for n in entries
               if n["state"] == "down" or n.get("reachability") == "unreachable"]
        if bad and not alive:
            dead[name] = f"swarm says {bad[0]}"
    return dead


def swarm_view(ctx: RunContext, answering: dict[str, str]) -> list[dict[str, Any]] | None:
    """The swarm's node list, asked through the first answering node that is a manager; None
    when none can tell (no swarm yet, or only workers answer)."""
    s = ctx.params.ssh
    for name, ip in answering.items():
        try:
            client = docker_pool(ctx).get(ip, s.port, s.admin_user, s.private_key_file,
                                          s.connect_timeout_s, known_hosts=known_hosts(ctx),
                                          node=name)
            if docker_swarm.swarm_state(client)["manager"]:
                return docker_swarm.nodes(client)
        except Exception:  # noqa: BLE001 - another answering node may tell; else no verdict
            continue
    return None


def node_ssh(ctx: RunContext, name: str, ip: str) -> ssh.Connection:
    """The run's open SSH connection to ``name`` as the admin user (made on first use, the
    host key checked against the pins; later steps of the run reuse it)."""
    s = ctx.params.ssh
    pool: ssh.Pool = ctx.shared.setdefault("ssh", ssh.Pool())
    return pool.get(ip, s.port, s.admin_user, s.private_key_file, s.connect_timeout_s,
                    known_hosts=known_hosts(ctx), node=name)


def _admin_ssh_ok(ctx: RunContext, name: str, ip: str) -> str | ssh.HostKeyError | None:
    """cloud-init's status and the admin's groups, over a fresh connection; a HostKeyError is
    returned, not raised, so that waiting (which retries on other errors) stops at once."""
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


def _wait_admins(ctx: RunContext, nodes: dict[str, str], what: str, timeout: float,
                 judge: Callable[[list[str], dict[str, str]], dict[str, str]] | None = None,
                 dead_after: float = DEAD_AFTER_S
                 ) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(name -> the admin's answer, for each of ``nodes`` that answered within ``timeout``;
    name -> the last error of each that did not; name -> why it is dead, for each that
    ``judge`` declared dead). Every node is tried at once, under one progress bar. Once
    nodes have been silent for ``dead_after`` seconds, ``judge(silent, answers)`` is asked
    each round, and the wait ends as soon as every node answered or was declared dead. A
    changed host key raises at once."""
    answers: dict[str, str] = {}
    dead: dict[str, str] = {}
    last: dict[str, str] = {name: "no answer yet" for name in nodes}
    started = time.monotonic()

    def attempt(name: str) -> str | ssh.HostKeyError | None:
        try:
            return _admin_ssh_ok(ctx, name, nodes[name])
        except Exception as exc:  # noqa: BLE001 - not answering yet is what we wait through
            last[name] = f"{type(exc).__name__}: {exc}"[:200]
            return None

    def probe() -> bool | ssh.HostKeyError | None:
        pending = [name for name in nodes if name not in answers]
        for name, answer in zip(pending, parallel(attempt, pending), strict=True):
            if isinstance(answer, ssh.HostKeyError):
                return answer
            if answer:
                answers[name] = answer
                dead.pop(name, None)
        silent = [name for name in nodes if name not in answers]
        if judge is not None and silent and time.monotonic() - started >= dead_after:
            dead.update(judge(silent, answers))
        return len(answers) + len(dead) == len(nodes) or None

    try:
        stopped = wait_for(what, probe, timeout)
    except WaitTimeout:
        stopped = None
    if isinstance(stopped, ssh.HostKeyError):
        raise stopped
    return (answers, {name: error for name, error in last.items() if name not in answers},
            dead)


def wait_for_ssh(ctx: RunContext, patience: float = 120, timeout: float = 300) -> StepResult:
    """Every server answers SSH as the admin user on ``ssh.port`` with the operator's key,
    and shows the host key pinned for it.

    A server that has not answered within ``patience`` seconds (a crashed or hung node, which
    the API still calls "running") gets a hard reset through the API, behind the approval
    gate, and one more ``timeout`` to come back; after that the step fails and says so. A
    server silent for ``DEAD_AFTER_S`` that the Swarm (asked through a node that answers)
    reports down or unreachable is dead: it is reset then, without waiting out ``patience``.
    A server this run created or powered on is never declared dead early. A server that
    answers with another host key is never reset: the step stops and names it.
    """
    s = ctx.params.ssh
    with timed(StepResult("ssh", f"{s.admin_user}@*:{s.port}", dry_run=ctx.dry_run)) as result:
        nodes = node_addresses(ctx)
        if ctx.dry_run and not nodes:
            result.reason = "no servers yet: nothing to reach"
            return result
        booting = booted_this_run(ctx)

        def judge(silent: list[str], answering: dict[str, str]) -> dict[str, str]:
            view = swarm_view(ctx, {n: nodes[n] for n in answering})
            return dead_in_swarm(silent, view, booting) if view is not None else {}

        answers, errors, dead = _wait_admins(
            ctx, nodes, f"SSH as {s.admin_user} on {len(nodes)} node(s) (:{s.port})",
            60 if ctx.dry_run else patience, judge)
        silent = [name for name in nodes if name not in answers]
        plan = Plan(gate_title=f"Reset {', '.join(silent)}: a hard reset is like pulling the "
                    "plug; data on disk stays")
        for name in silent:
            why = (f"dead: no SSH for {DEAD_AFTER_S:.0f} s and {dead[name]}" if name in dead
                   else f"no SSH for {patience:.0f} s")
            plan.add(f"~ server {name}: hard reset ({why})",
                     lambda n=name: reset_server(ctx, n), destructive=True)
        if apply(ctx, result, plan).dry_run:
            for name in silent:
                result.check(f"{name} ssh", False, f"not answering ({errors[name]}); a real "
                             "run resets it")
        elif silent:
            back, errors, _ = _wait_admins(ctx, {n: nodes[n] for n in silent},
                                f"SSH on {', '.join(silent)} after a reset", timeout)
            for name in silent:
                if name not in back:
                    raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for SSH as "
                                      f"{s.admin_user} on {name} ({nodes[name]}:{s.port}) "
                                      f"after a hard reset; last answer: {errors[name]}")
            answers.update(back)
        for name, ip in nodes.items():
            if name not in answers:
                continue
            status, _, groups = answers[name].partition("\n")
            result.check(f"{name} cloud-init done", "error" not in status,
                         f"{ip}:{s.port}, pinned host key, {status.strip()}")
            result.check(f"{name} admin in docker group", "docker" in groups.split(),
                         f"{s.admin_user} groups: {groups.strip()}")
    return result


def password_check(attempt: ssh.PasswordAttempt, user: str) -> tuple[bool, str]:
    """Refused *by method* is the good outcome: sshd answers that passwords are not allowed
    at all, whereas a "wrong password" answer means it would take the right one."""
    if attempt.outcome == "refused_by_method":
        bad = PASSWORD_METHODS & set(attempt.offered)
        if bad:
            return False, f"sshd still offers {', '.join(sorted(bad))} to {user}"
        return True, (f"password for {user} refused by method: sshd offers only "
                      f"{', '.join(attempt.offered)}")
    if attempt.outcome == "wrong_password":
        return False, f"sshd ASKED for {user}'s password (wrong one refused only)"
    return False, f"a random password for {user} was ACCEPTED"


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
    with the operator's valid key is refused, and a password login is refused by method.

    Two rounds, each over every node at once: what sshd says inside each node, then every
    probe from outside (a firewall drops rather than refuses, so each closed port costs its
    whole timeout: waiting probe by probe would add up)."""
    s = ctx.params.ssh
    known = known_hosts(ctx)
    probe_timeout = min(s.connect_timeout_s, 3.0)
    with timed(StepResult("ssh hardening", f"{len(ctx.params.server_names())} nodes",
                          dry_run=ctx.dry_run)) as result:
        nodes = node_addresses(ctx)
        if ctx.dry_run and not nodes:
            result.reason = "no servers yet: nothing to check"
            return result

        def inside(name: str) -> tuple[str, str]:
            conn = node_ssh(ctx, name, nodes[name])
            return ssh.run(conn, "sudo sshd -T"), ssh.run(conn, LISTENERS_COMMAND)

        seen = dict(zip(nodes, parallel(inside, list(nodes)), strict=True))
        # Every port sshd is configured for or was seen on, plus 22.
        to_probe = sorted((name, port) for name, (sshd_t, ss_out) in seen.items()
                          for port in (sshd_ports(sshd_t) | listening_ports(ss_out) | {22})
                          - {s.port})
        users = list(dict.fromkeys((s.admin_user, "root")))
        calls: list[Callable[[], Any]] = [
            lambda n=name, port=port: ssh.probe_port(nodes[n], port, probe_timeout)
            for name, port in to_probe]
        # Hetzner puts the operator's key in root's authorized_keys: only sshd's
        # PermitRootLogin stands between that key and a root shell.
        calls += [lambda n=name: ssh.key_login(known, nodes[n], s.port, "root",
                                               s.private_key_file, s.connect_timeout_s, n)
                  for name in nodes]
        calls += [lambda n=name, u=user: ssh.password_attempt(known, nodes[n], s.port, u,
                                                              s.connect_timeout_s, n)
                  for name in nodes for user in users]
        found = iter(parallel(lambda call: call(), calls))
        probes = {pair: next(found) for pair in to_probe}
        root = {name: next(found) for name in nodes}
        passwords = {(name, user): next(found) for name in nodes for user in users}
        for name, ip in nodes.items():
            sshd_t, ss_out = seen[name]
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
            for (node, port), (answers, detail) in probes.items():
                if node == name:
                    result.check(f"{name} port {port} closed from outside", not answers,
                                 f"{ip}:{port} {detail}")
            outcome, detail = root[name]
            result.check(f"{name} root login refused", outcome == "refused",
                         "root with the operator's valid key: refused"
                         if outcome == "refused" else detail)
            for user in users:
                refused, detail = password_check(passwords[name, user], user)
                result.check(f"{name} password login refused ({user})", refused, detail)
    return result
