"""Health and drift, read-only: live state against params, each difference a red check that
names the runbook (or params line) that fixes it. Nothing here changes anything.

Two kinds of check, as Ansible's check mode and pyinfra's facts split them:

* :func:`drift` runs a bootstrap ``ensure_*`` step in check mode (a dry-run copy of the run's
  context) and turns its plan into checks: the plan a dry run shows is by construction what
  the bootstrap would change, so "no plan" is "as params say", and every plan line is a
  difference. The inner step's own result is not journaled: this run changes nothing, and its
  record must not count the bootstrap's would-be changes as its own.
* ``verify_*`` read what a plan cannot express (a server of the wrong type, a service scaled
  by hand, a stale backup) and check it directly; :func:`check` runs them, and the bootstrap's
  own ``verify_*`` steps, so that one red step does not hide the next.

A health run reads everything before it judges: :func:`drift` and :func:`check` return a red
result instead of raising (it is journaled, so the run's record has it), and the last step,
:func:`verdict`, fails the run when any was red. So a scheduled run (CI) exits 1 on drift, and
its kept notebook lists every difference, not only the first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from casera.context import RunContext
from casera.errors import CaseraError, WaitTimeout
from casera.progress import wait_for
from casera.providers import hetzner
from casera.result import ChecksFailed, StepResult, timed, unrecorded
from casera.steps.stack import SERVICES, STACK, running_tasks, stack_services
from casera.steps.swarm import cluster_or_reason

SEEN = "health_results"  # ctx.shared key: every result this run's health steps returned


def bootstrap_fix(ctx: RunContext) -> str:
    return f"casera run bootstrap --env {ctx.env}"


def _kept(ctx: RunContext, label: str, run: Callable[[], StepResult]) -> StepResult:
    """``run()``'s result, red or green, remembered for :func:`verdict`; an error that is not
    a red check becomes one (journaled too), naming what could not be read."""
    try:
        try:
            result = run()
        except ChecksFailed:
            raise
        except CaseraError as exc:
            with timed(StepResult(label, "could not be read")) as failed:
                failed.check("read", False, str(exc).splitlines()[0][:300] if str(exc)
                             else type(exc).__name__)
            result = failed
    except ChecksFailed as exc:
        result = exc.result
    ctx.shared.setdefault(SEEN, []).append(result)
    return result


def check(ctx: RunContext, verify: Callable[..., StepResult], *args: Any) -> StepResult:
    """``verify(ctx, *args)``, its result returned even when red (see the module's text)."""
    return _kept(ctx, verify.__name__.removeprefix("verify_").replace("_", " "),
                 lambda: verify(ctx, *args))


def drift(ctx: RunContext, ensure: Callable[..., StepResult], *args: Any,
          fix: str = "") -> StepResult:
    """``ensure(ctx, *args)`` in check mode: red when it would change anything, naming
    ``fix`` (default: the bootstrap) and showing its plan."""
    return _kept(ctx, "drift", lambda: _drift(ctx, ensure, *args, fix=fix or bootstrap_fix(ctx)))


def verdict(ctx: RunContext, what: str = "health") -> StepResult:
    """The run's answer: red, naming each red step, when any health step was (``what``: the
    runbook's steps that :func:`check` kept, e.g. the load test's)."""
    with timed(StepResult(what, ctx.env)) as result:
        seen = ctx.shared.get(SEEN, [])
        red = [r for r in seen if r.failed_checks]
        result.check("steps read", bool(seen), f"{len(seen)} {what} steps ran")
        for r in red:
            result.check(f"{r.step} {r.target}".strip(), False, "; ".join(
                f"{c.name}: {c.detail}" for c in r.failed_checks)[:400])
        if seen and not red:
            result.reason = (f"all {len(seen)} health steps green: live state is as params say"
                             if what == "health" else f"all {len(seen)} {what} steps green")
    return result


def _drift(ctx: RunContext, ensure: Callable[..., StepResult], *args: Any,
           fix: str) -> StepResult:
    label = ensure.__name__.removeprefix("ensure_").replace("_", " ")
    with timed(StepResult("drift", label)) as result:
        # Check mode: a copy of the context, so this run stays a real (not a dry) run.
        check_ctx = replace(ctx, dry_run=True, approve=False, planned={})
        try:
            with unrecorded():
                found = ensure(check_ctx, *args)
        except ChecksFailed as exc:
            found = exc.result
        except CaseraError as exc:
            result.check("read", False, f"{str(exc).splitlines()[0][:300]}; fix: {fix}")
            return result
        result.target = f"{found.step} {found.target}".strip()
        changes = [line.strip() for line in found.diff if line.lstrip()[:1] in "+-~"]
        result.diff = list(found.diff)
        result.check("as params say", found.changed == 0,
                     found.reason or "no difference" if found.changed == 0 else
                     f"{found.changed} difference(s): {'; '.join(changes[:3])}"
                     f"{' ...' if len(changes) > 3 else ''}; fix: {fix}")
        for red in found.failed_checks:
            result.check(red.name, False, f"{red.detail}; fix: {fix}")
    return result


def verify_servers(ctx: RunContext) -> StepResult:
    """Every server params name exists with params' type, location and labels and is
    running; no server carries the environment's label beyond them."""
    p = ctx.params
    with timed(StepResult("servers", p.cluster_label)) as result:
        hz = hetzner.for_env(p, ctx.secrets)
        found = {s.name: s for s in hz.servers.list(p.cluster_label)}
        fix = bootstrap_fix(ctx)
        for name in p.server_names():
            server = found.get(name)
            if not result.check(f"{name} exists", server is not None,
                                f"missing; fix: {fix}" if server is None else
                                f"id {server.id}, {server.ipv4}"):
                continue
            assert server is not None
            want = (p.hetzner.server_type, p.hetzner.location)
            have = (server.server_type, server.location)
            result.check(f"{name} type and location", have == want,
                         f"{have[0]} in {have[1]}" + ("" if have == want else
                                                     f"; params say {want[0]} in {want[1]}: "
                                                     "replace the server (scale-out a new one, "
                                                     "then scale-in this one) or fix params"))
            missing = {k: v for k, v in p.hetzner.labels.items() if server.labels.get(k) != v}
            result.check(f"{name} labels", not missing,
                         "as params say" if not missing else
                         f"lacks {missing}; fix: set them in the Hetzner console")
            result.check(f"{name} power", server.status == "running",
                         server.status if server.status == "running" else
                         f"{server.status}; fix: {fix} (it powers servers on), or the "
                         "redis-failover runbook (node-lost) if it held Redis")
        extra = sorted(set(found) - set(p.server_names()))
        result.check("no server beyond params", not extra,
                     "none" if not extra else
                     f"{', '.join(extra)} carry {p.cluster_label} but params stop at "
                     f"{p.hetzner.server_count}: scale-in removes them, or raise "
                     "hetzner.server_count")
    return result


IN_PROGRESS = ("updating", "rollback_started")
SETTLE_S = 120.0


def _settled_services(client: Any) -> dict[str, dict[str, Any]]:
    """The stack's services once no rolling update is in progress: a health run right after
    a deploy (or during one) judges where the update lands, not a task being replaced.
    Bounded: still in progress after SETTLE_S, it judges what it sees (red, naming it)."""
    def settled() -> tuple[dict[str, dict[str, Any]]] | None:
        services = stack_services(client)
        busy = [n for n, s in services.items() if s.get("update_state", "") in IN_PROGRESS]
        return None if busy else (services,)  # a tuple: an empty stack is an answer too

    try:
        return wait_for("the stack's rolling updates in progress to finish", settled,
                        SETTLE_S, interval=2)[0]
    except WaitTimeout:
        return stack_services(client)


def verify_services(ctx: RunContext) -> StepResult:
    """Each stack service runs params' replicas on params' image, its update settled, its
    tasks on the service's current spec."""
    p = ctx.params
    with timed(StepResult("services", STACK)) as result:
        cluster, reason = cluster_or_reason(ctx)
        if not result.check("swarm reachable", cluster is not None, reason or "yes"):
            return result
        assert cluster is not None
        services = _settled_services(cluster.manager)
        running = running_tasks(cluster.manager)
        fix = bootstrap_fix(ctx)
        for name in SERVICES:
            sp = getattr(p.services, name)
            service = services.get(name)
            if not result.check(f"{name} deployed", service is not None,
                                "yes" if service else f"no service {STACK}_{name}; fix: {fix}"):
                continue
            assert service is not None
            spec = service["spec"]
            replicas = (spec.get("Mode") or {}).get("Replicated", {}).get("Replicas")
            tasks = running.get(service["id"], [])
            result.check(f"{name} replicas", replicas == sp.replicas == len(tasks),
                         f"spec {replicas}, running {len(tasks)}, params {sp.replicas}"
                         + ("" if replicas == sp.replicas == len(tasks) else
                            f"; fix: {fix} (a hand-made `docker service scale` is drift)"))
            image = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get(
                "Image", "")
            # Swarm pins a tag to its digest (image:tag@sha256:...): compare the reference.
            result.check(f"{name} image", image.split("@")[0] == sp.image,
                         image.split("@")[0] + ("" if image.split("@")[0] == sp.image else
                                                f"; params say {sp.image}; fix: {fix}"))
            state = service.get("update_state", "")
            # rollback_completed is red too: the service runs its previous spec, not params'.
            result.check(f"{name} update settled", state in ("", "completed"),
                         state or "no update" if state in ("", "completed") else
                         f"{state}; the last rolling update did not finish as deployed: "
                         f"`docker service ps {STACK}_{name}`, then {fix}")
    return result


def verify_backup_age(ctx: RunContext, now: float | None = None) -> StepResult:
    """The newest Redis snapshot in B2 is younger than twice the backup interval: older
    means the backup service stopped working, and a restore would lose more than the RPO
    params promise."""
    from casera.steps import redis_backup

    p = ctx.params
    limit_s = 2 * p.redis.backup.interval_min * 60
    with timed(StepResult("redis backups", p.b2.buckets[p.redis.backup.bucket].name
                          + "/" + p.redis.backup.prefix)) as result:
        found = redis_backup.snapshots(ctx)
        if not result.check("a snapshot exists", bool(found),
                            f"{len(found)} snapshot(s)" if found else
                            "none: check the backup service (`docker service logs "
                            f"{STACK}_backup`), then run the redis-backup runbook"):
            return result
        age = found[-1].age_s(now if now is not None else time.time())
        result.check("newest snapshot age", age <= limit_s,
                     f"{found[-1].name}: {age:.0f} s old, limit {limit_s} s (2 x "
                     f"redis.backup.interval_min)" + ("" if age <= limit_s else
                                                      f"; fix: the backup service "
                                                      f"(`docker service logs {STACK}_backup`)"
                                                      ", then the redis-backup runbook"))
    return result
