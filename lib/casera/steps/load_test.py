"""The load test: locust, headless, against the load balancer only, in the profiles
``params.load_test`` sets (a steady mix, a ramp to saturation, the nightly digest burst), and
the figures, plots, threshold checks and capacity advice read from what it measured.

Every request goes to the LB's address (https with the origin CA when the edge is on, as
:mod:`casera.steps.api_endpoint` says), bounded in users, rate and time by the profile's
params; the digest burst goes through the api's ``POST /digests`` and is drained by the
workers, its queue depth sampled in Redis (through the SSH tunnel the Redis runbooks use).
PgBouncer's pools (``SHOW POOLS``) are sampled every second while locust runs.

Each profile's thresholds are checks. Like the health runbook, every profile is measured
before the run is judged (:func:`casera.steps.health.check` keeps a red result instead of
raising), so a breach in the steady mix still shows the ramp, the burst and the plots; the
last step, :func:`verdict`, fails the run (exit 1), naming each breached threshold, where and
by how much.
"""

from __future__ import annotations

import base64
import io
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from casera import load_stats
from casera.context import RunContext
from casera.db_roles import app_credential
from casera.errors import CaseraError, StepFailed
from casera.progress import Progress, wait_for
from casera.providers import load_generator, pgbouncer, redis_db
from casera.result import StepResult, timed
from casera.steps import health
from casera.steps.api_endpoint import ApiEndpoint, api_endpoint_for
from casera.steps.load_balancer import public_address
from casera.steps.redis_checks import redis_client

STATE = "load_test"  # ctx.shared key: what each profile measured, for the plots and advice
QUEUE = "default"  # the stack's Asynq queue (CASERA_QUEUES in the stack template)
# Neon's max_connections per compute size (CU): https://neon.com/docs/connect/connection-pooling
# ("Why connection pooling matters"); 9 CU and above are capped at 4000. Its pooler's pool per
# (user, database) is sized at 90% of it, and 7 connections are reserved for Neon's superuser.
NEON_MAX_CONNECTIONS = {0.25: 104, 0.5: 209, 1: 419, 2: 839, 3: 1258, 4: 1678, 5: 2098,
                        6: 2517, 7: 2937, 8: 3357}
NEON_MAX_CONNECTIONS_CAP = 4000
NEON_POOL_SHARE = 0.9
PLAN_DIGEST_JOBS = 100_000  # the plan's nightly digest burst


def neon_max_connections(cu: float) -> int:
    """Neon's max_connections for a compute of ``cu`` (the next size up when between two)."""
    if cu >= 9:
        return NEON_MAX_CONNECTIONS_CAP
    size = min((s for s in NEON_MAX_CONNECTIONS if s >= cu), default=8)
    return NEON_MAX_CONNECTIONS[size]


@dataclass
class Profile:
    name: str
    t0: float
    rows: list[load_generator.Request]
    stages: list[tuple[float, int, float]]
    pools: list[tuple[float, list[pgbouncer.Pool]]] = field(default_factory=list)


@dataclass
class Measured:
    endpoint: ApiEndpoint
    profiles: dict[str, Profile] = field(default_factory=dict)
    pool_error: str | None = None
    depth: list[tuple[float, int]] = field(default_factory=list)  # (s since burst start, depth)
    burst: dict[str, Any] = field(default_factory=dict)
    saturation: load_stats.Saturation | None = None


def _measured(ctx: RunContext) -> Measured:
    found = ctx.shared.get(STATE)
    if found is None:
        address = public_address(ctx)
        if address is None:
            raise StepFailed("no load balancer (nor server) to send load to: run the "
                             f"bootstrap first (casera run bootstrap --env {ctx.env})")
        found = ctx.shared[STATE] = Measured(api_endpoint_for(ctx.params, address))
    return found


def _dry(ctx: RunContext, result: StepResult, what: str) -> bool:
    """In a dry run, say what would be sent (and where) instead of sending it."""
    if ctx.dry_run:
        result.reason = f"dry run: would send {what} to {_measured(ctx).endpoint.base_url}"
    return ctx.dry_run


def _target(endpoint: ApiEndpoint) -> load_generator.Target:
    return load_generator.Target(endpoint.base_url, endpoint.hostname,
                                 str(endpoint.ca_file) if endpoint.ca_file else None)


# ------------------------------------------------------------------ warm-up


def warm_up(ctx: RunContext) -> StepResult:
    """Requests that are not counted: the api answers through the LB, and a Neon compute that
    scaled to zero wakes (its cold start must not count against p95)."""
    lt = ctx.params.load_test
    m = _measured(ctx)
    with timed(StepResult("warm-up", m.endpoint.base_url, dry_run=ctx.dry_run)) as result:
        if _dry(ctx, result, f"{lt.warm_up_requests} requests, not counted"):
            return result
        session = m.endpoint.requests_session()

        def ready() -> bool:
            return session.get(m.endpoint.url("/readyz"), timeout=10).status_code == 200

        started = time.monotonic()
        wait_for(f"the api's /readyz through the LB {m.endpoint.base_url} (a Neon compute "
                 "scaled to zero wakes on the first query)", ready, lt.warm_up_timeout_s)
        first_s = time.monotonic() - started
        answered, slowest = 0, 0.0
        for n in range(lt.warm_up_requests):
            begin = time.monotonic()
            if n % 4 == 3:  # a write too: the pool's server connections open on first use
                answer = session.post(m.endpoint.url("/items"), json={"name": "warm-up"},
                                      timeout=30)
            else:
                answer = session.get(m.endpoint.url("/readyz"), timeout=30)
            slowest = max(slowest, time.monotonic() - begin)
            answered += answer.status_code < 400
        result.check("warm-up answered", answered == lt.warm_up_requests,
                     f"{answered}/{lt.warm_up_requests} requests answered (not counted), "
                     f"slowest {slowest * 1000:.0f} ms; the first /readyz after "
                     f"{first_s:.1f} s")
    return result


# ------------------------------------------------------------------ profiles


def _run(ctx: RunContext, name: str, stages: list[tuple[float, int, float]], rate: float,
         write_share: float) -> Profile:
    """locust over ``stages`` against the LB, PgBouncer's pools sampled every second."""
    m = _measured(ctx)
    n = ctx.params.neon
    console = None
    if m.pool_error is None:
        try:
            app = app_credential(ctx)
            console = pgbouncer.open_console(n.pooler_host, n.pooler_port, app.role,
                                             app.password, n.sslmode,
                                             n.sslrootcert, n.hostaddr)
        except CaseraError as exc:
            m.pool_error = str(exc).splitlines()[0][:300]
    profile = Profile(name, time.time(), [], stages)
    seconds = stages[-1][0]
    progress = Progress(f"locust's {name} profile ({max(s[1] for s in stages)} users at most)",
                        seconds)

    def sample() -> None:
        progress.update(min(time.time() - profile.t0, seconds))
        if console is None:
            return
        try:
            profile.pools.append((time.time() - profile.t0, pgbouncer.show_pools(console)))
        except CaseraError as exc:
            m.pool_error = str(exc).splitlines()[0][:300]

    try:
        with progress, tempfile.TemporaryDirectory(prefix="casera-load-") as workdir:
            profile.rows, _ = load_generator.run(_target(m.endpoint), stages, rate, write_share,
                                                 Path(workdir), every_second=sample)
        if profile.rows:
            # locust's shape clock starts with its first user, a moment after the process.
            profile.t0 = min(r.start for r in profile.rows)
    finally:
        if console is not None:
            console.close()
    m.profiles[name] = profile
    return profile


def verify_steady_profile(ctx: RunContext) -> StepResult:
    """The steady mix of reads and writes; its figures against the thresholds."""
    lt = ctx.params.load_test
    s, th = lt.steady, lt.thresholds
    with timed(StepResult("steady profile", f"{s.users} users x {s.rate_per_user:g}/s "
                          f"for {s.duration_s} s", dry_run=ctx.dry_run)) as result:
        if _dry(ctx, result, f"at most {s.users * s.rate_per_user * s.duration_s:.0f} "
                "requests"):
            return result
        profile = _run(ctx, "steady", [(float(s.duration_s), s.users, float(s.users))],
                       s.rate_per_user, s.write_share)
        f = load_stats.figures(profile.rows, duration_s=float(s.duration_s))
        result.note("figures", f.text())
        result.check("requests made", f.requests > 0, f"{f.requests} requests recorded")
        for b in [*load_stats.latency_breaches(f, th.p95_ms, th.p99_ms, th.error_ratio,
                                               "steady profile"),
                  load_stats.at_least("min_rps", f.rps, th.min_rps, "RPS", "steady profile")]:
            result.check(b.key, b.ok, b.detail)
        _check_pools(ctx, result, profile)
    return result


def verify_ramp_to_saturation(ctx: RunContext) -> StepResult:
    """Users rise level by level; the RPS at which p95 or the error ratio first crosses its
    threshold is the saturation point, and it must be at least ``min_saturation_rps``."""
    lt = ctx.params.load_test
    r, th = lt.ramp, lt.thresholds
    stages = load_stats.ramp_stages(r.start_users, r.step_users, r.max_users, r.step_s)
    with timed(StepResult("ramp", f"{r.start_users}..{r.max_users} users, "
                          f"+{r.step_users} every {r.step_s} s", dry_run=ctx.dry_run)) as result:
        if _dry(ctx, result, f"{len(stages)} levels over {stages[-1][0]:.0f} s"):
            return result
        profile = _run(ctx, "ramp", stages, r.rate_per_user, r.write_share)
        sat = load_stats.saturation(profile.rows, profile.t0, stages, th.p95_ms, th.error_ratio)
        _measured(ctx).saturation = sat
        for level in sat.levels:
            result.note(f"{level.users} users", level.figures.text()
                        + (f"; CROSSED: {'; '.join(level.over)}" if level.over else ""))
        result.check("requests made", sum(lv.figures.requests for lv in sat.levels) > 0,
                     f"{len(profile.rows)} requests recorded")
        b = load_stats.at_least("min_saturation_rps", sat.rps, th.min_saturation_rps, "RPS",
                                f"ramp, saturation {sat.text()}")
        result.check(b.key, b.ok, b.detail)
        _check_pools(ctx, result, profile)
    return result


def _check_pools(ctx: RunContext, result: StepResult, profile: Profile) -> None:
    """PgBouncer's pools during the profile against Neon's connection limit."""
    m = _measured(ctx)
    cu = ctx.params.load_test.neon_compute_cu
    limit = neon_max_connections(cu)
    if not profile.pools:
        result.note("PgBouncer pools", f"not read ({m.pool_error or 'no sample'}): Neon does "
                    "not document its pooler's admin console; watch the Monitoring page's "
                    "connections graph during the run instead")
        return
    waiting = max(sum(p.cl_waiting for p in pools) for _, pools in profile.pools)
    servers = max(sum(p.servers for p in pools) for _, pools in profile.pools)
    busy = max(sum(p.sv_active for p in pools) for _, pools in profile.pools)
    result.note("PgBouncer pools", f"{len(profile.pools)} samples of SHOW POOLS: at most "
                f"{waiting} client(s) waiting, {busy} server connection(s) in use, {servers} "
                f"open; Neon's max_connections for {cu:g} CU: {limit} (its pooler's pool: "
                f"{int(limit * NEON_POOL_SHARE)})")
    result.check("server connections within Neon's limit", servers <= limit * NEON_POOL_SHARE,
                 f"{servers} open <= {int(limit * NEON_POOL_SHARE)} (90% of {limit}, "
                 f"{cu:g} CU)" if servers <= limit * NEON_POOL_SHARE else
                 f"{servers} open > {int(limit * NEON_POOL_SHARE)} (90% of {limit} for "
                 f"{cu:g} CU): a larger compute (load_test.neon_compute_cu and Neon's "
                 "autoscaling limits) or fewer api/worker connections")


# ------------------------------------------------------------------ digest burst


def verify_digest_burst(ctx: RunContext) -> StepResult:
    """N digest tasks enqueued through the api (``POST /digests``, in batches), drained by the
    workers; the queue depth sampled in Redis until empty, the drain rate in jobs/s."""
    b = ctx.params.load_test.digest_burst
    th = ctx.params.load_test.thresholds
    m = _measured(ctx)
    with timed(StepResult("digest burst", f"{b.jobs} jobs", dry_run=ctx.dry_run)) as result:
        if _dry(ctx, result, f"{b.jobs} digest jobs in batches of {b.batch}"):
            return result
        if b.jobs < PLAN_DIGEST_JOBS:
            result.note("size", f"{b.jobs} jobs, smaller than the plan's {PLAN_DIGEST_JOBS} "
                        f"on purpose (params/{ctx.env}.yaml); staging and production run "
                        f"{PLAN_DIGEST_JOBS}")
        session = m.endpoint.requests_session()
        with redis_client(ctx) as (client, task):
            before = redis_db.queue_depth(client, QUEUE)
            t0 = time.time()
            enqueued, refused = 0, []
            while enqueued < b.jobs:
                count = min(b.batch, b.jobs - enqueued)
                answer = session.post(m.endpoint.url("/digests"), timeout=60,
                                      json={"count": count, "batch": f"load-{ctx.run_id}"})
                if answer.status_code != 202:
                    refused.append(f"{answer.status_code} {answer.text[:120]}")
                    break
                enqueued += count
                m.depth.append((time.time() - t0, redis_db.queue_depth(client, QUEUE)))
            enqueue_s = time.time() - t0
            result.check("enqueued through the api", enqueued == b.jobs and not refused,
                         f"{enqueued}/{b.jobs} in {enqueue_s:.1f} s "
                         f"({enqueued / max(enqueue_s, 1e-3):.0f} jobs/s)"
                         + (f"; POST /digests answered {refused[0]}" if refused else ""))
            with Progress(f"the workers to drain {enqueued} digest jobs",
                          b.drain_timeout_s) as progress:
                while time.time() - t0 < enqueue_s + b.drain_timeout_s:
                    depth = redis_db.queue_depth(client, QUEUE)
                    m.depth.append((time.time() - t0, depth))
                    progress.update(time.time() - t0 - enqueue_s)
                    if depth <= before:
                        break
                    time.sleep(0.25)
        last = m.depth[-1][1] if m.depth else before
        rate = load_stats.drain_rate([(t, max(d - before, 0)) for t, d in m.depth], enqueued,
                                     0.0)
        m.burst = {"jobs": enqueued, "enqueue_s": enqueue_s, "drain_rate": rate,
                   "peak": max((d for _, d in m.depth), default=0), "redis_node": task.node,
                   "enqueue_rate": enqueued / max(enqueue_s, 1e-3)}
        result.check("drained", last <= before,
                     f"queue {QUEUE} back to {last} (before: {before}) after "
                     f"{m.depth[-1][0]:.1f} s, peak depth {m.burst['peak']}"
                     if last <= before else
                     f"{last - before} of {enqueued} still queued after "
                     f"{b.drain_timeout_s} s (load_test.digest_burst.drain_timeout_s)")
        b2 = load_stats.at_least("min_drain_jobs_per_s", rate or 0.0, th.min_drain_jobs_per_s,
                                 "jobs/s", f"digest burst of {enqueued}")
        result.check(b2.key, b2.ok, b2.detail)
        if rate:
            result.note("the plan's burst", f"{PLAN_DIGEST_JOBS} jobs at {rate:.0f} jobs/s: "
                        f"{PLAN_DIGEST_JOBS / rate / 60:.1f} min of draining")
    return result


# ------------------------------------------------------------------ plots and advice


class Plot:
    """A PNG that a notebook shows inline, kept in the output."""

    def __init__(self, png: bytes, title: str) -> None:
        self.png, self.title = png, title

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        # base64 text, as the notebook format keeps it: raw bytes from _repr_png_ reach some
        # clients (nbval's) unencoded and cannot be written to JSON
        return {"image/png": base64.b64encode(self.png).decode("ascii"),
                "text/plain": repr(self)}

    def __repr__(self) -> str:
        return f"<plot: {self.title}, {len(self.png)} bytes of PNG>"


def plots(ctx: RunContext) -> Plot:
    """Latency percentiles and RPS over time per profile, errors, and the queue depth."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    m = _measured(ctx)
    names = list(m.profiles)
    fig, axes = plt.subplots(3, max(len(names), 1), figsize=(6 * max(len(names), 1), 9),
                             squeeze=False)
    for col, name in enumerate(names):
        profile = m.profiles[name]
        series = load_stats.per_second(profile.rows, profile.t0)
        t = [s.t for s in series]
        ax = axes[0][col]
        for label, values in (("p50", [s.p50_ms for s in series]),
                              ("p95", [s.p95_ms for s in series]),
                              ("p99", [s.p99_ms for s in series])):
            ax.plot(t, values, label=label)
        ax.axhline(ctx.params.load_test.thresholds.p95_ms, color="red", linestyle=":",
                   label="p95 threshold")
        ax.set_title(f"{name}: latency (ms)")
        ax.legend(fontsize="small")
        axes[1][col].plot(t, [s.rps for s in series], color="green")
        axes[1][col].set_title(f"{name}: requests/s")
        axes[2][col].bar(t, [s.errors for s in series], color="red")
        axes[2][col].set_title(f"{name}: errors/s")
        axes[2][col].set_xlabel("seconds since the profile started")
    fig.tight_layout()
    png = _png(fig, plt)
    if m.depth:
        fig2, ax = plt.subplots(figsize=(6, 3))
        ax.plot([t for t, _ in m.depth], [d for _, d in m.depth], marker=".")
        ax.set_title(f"digest burst: queue depth ({m.burst.get('jobs', 0)} jobs)")
        ax.set_xlabel("seconds since the first enqueue")
        fig2.tight_layout()
        png_depth = _png(fig2, plt)
        return Plot(_stack_png([png, png_depth]), "latency, RPS, errors, queue depth")
    return Plot(png, "latency, RPS, errors")


def _png(fig: Any, plt: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    plt.close(fig)
    return buffer.getvalue()


def _stack_png(pngs: list[bytes]) -> bytes:
    """One PNG of several, one above the other (one output image in the notebook)."""
    import matplotlib.image as mpimg
    from matplotlib import pyplot as plt

    images = [mpimg.imread(io.BytesIO(p), format="png") for p in pngs]
    width = max(i.shape[1] for i in images)
    height = sum(i.shape[0] for i in images)
    fig = plt.figure(figsize=(width / 72, height / 72), dpi=72)
    top = 1.0
    for image in images:
        h = image.shape[0] / height
        ax = fig.add_axes((0, top - h, image.shape[1] / width, h))
        ax.imshow(image)
        ax.axis("off")
        top -= h
    return _png(fig, plt)


def capacity_advice(ctx: RunContext) -> StepResult:
    """Which limit was hit first, from the measured numbers, and what the plan's next step
    would change. Advice only: it cannot fail (the thresholds did that)."""
    m = _measured(ctx)
    p = ctx.params
    with timed(StepResult("capacity advice", ctx.env)) as result:
        result.note("figures", "local figures measure the method, not Hetzner's hardware"
                    if ctx.env == "local" else f"measured on {ctx.env}")
        pools = [pl for pr in m.profiles.values() for _, pl in pr.pools]
        waiting = max((sum(x.cl_waiting for x in pl) for pl in pools), default=0)
        sat = m.saturation
        drain = m.burst.get("drain_rate")
        enqueue = m.burst.get("enqueue_rate", 0.0)
        first = []
        if waiting:
            first.append(f"the pooler: up to {waiting} client(s) waited for a server "
                         "connection (SHOW POOLS cl_waiting): a larger Neon compute raises "
                         "max_connections; more api replicas would only wait longer")
        if sat is not None and sat.crossed is not None:
            first.append(f"the api: p95/errors crossed at {sat.rps:.1f} RPS "
                         f"({sat.users} users, {p.services.api.replicas} api replica(s)): "
                         "more api replicas (services.api.replicas) spread it over more "
                         "CPUs up to the nodes' cores; beyond that, scale-out "
                         "(hetzner.server_count) adds nodes")
        ramp = ctx.params.load_test.ramp
        if sat is not None and sat.crossed is None and sat.levels:
            top = sat.levels[-1]
            offered = top.users * ramp.rate_per_user
            if top.figures.rps < 0.9 * offered:
                first.append(f"the api's throughput: {top.figures.rps:.1f} RPS served of "
                             f"{offered:.0f} offered at {top.users} users, before p95 or "
                             "errors crossed their thresholds: more api replicas "
                             "(services.api.replicas) or scale-out (hetzner.server_count)")
        if drain and drain < enqueue:
            first.append(f"worker drain: {drain:.0f} jobs/s against {enqueue:.0f} jobs/s "
                         f"enqueued ({p.services.worker.replicas} worker replica(s)): more "
                         "worker replicas drain the digest burst faster until Redis or the "
                         "nodes' CPU is the limit")
        elif drain:
            first.append(f"Redis/the api's enqueue: {enqueue:.0f} jobs/s enqueued, "
                         f"{drain:.0f} jobs/s drained: the enqueue side was the slower")
        if not first:
            first.append("no limit was reached within the profiles' bounds: raise "
                         "load_test.ramp.max_users to find it")
        for n, text in enumerate(first, 1):
            result.note(f"limit {n}", text)
        if sat is not None:
            result.note("saturation", sat.text())
    return result


def verdict(ctx: RunContext) -> StepResult:
    """The run's answer: red, naming each breached threshold, where and by how much."""
    return health.verdict(ctx, what="load test")


check = health.check
