"""The load test's figures, computed from its per-request rows (one row per request, as the
locustfile logs them), not from locust's rolling windows: so the same rows give the run's
totals, the per-second series the plots show, the figures per users level of the ramp, and the
threshold checks. Pure functions, no I/O.

Percentiles are nearest-rank (the smallest value with at least q% of the values at or below
it): a p95 is then a latency some request really had, and with few requests it errs high,
never low.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Row(Protocol):
    start: float  # unix seconds
    ms: float
    ok: bool


@dataclass(frozen=True)
class Figures:
    requests: int
    errors: int
    duration_s: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def text(self) -> str:
        return (f"{self.requests} requests in {self.duration_s:.1f} s: {self.rps:.1f} RPS, "
                f"p50 {self.p50_ms:.0f} ms, p95 {self.p95_ms:.0f} ms, p99 {self.p99_ms:.0f} ms, "
                f"errors {self.errors} ({self.error_ratio:.2%})")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in (0, 100]; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def figures(rows: Sequence[Row], duration_s: float | None = None) -> Figures:
    """The figures of ``rows``; RPS over ``duration_s`` (default: first start to last end)."""
    if not rows:
        return Figures(0, 0, duration_s or 0.0, 0.0, 0.0, 0.0, 0.0)
    if duration_s is None:
        first = min(r.start for r in rows)
        last = max(r.start + r.ms / 1000 for r in rows)
        duration_s = max(last - first, 1e-3)
    latencies = [r.ms for r in rows]
    return Figures(len(rows), sum(1 for r in rows if not r.ok), duration_s,
                   len(rows) / duration_s if duration_s > 0 else 0.0,
                   percentile(latencies, 50), percentile(latencies, 95),
                   percentile(latencies, 99))


@dataclass(frozen=True)
class Second:
    t: float  # seconds since the profile started
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int


def per_second(rows: Sequence[Row], t0: float) -> list[Second]:
    """One point per second since ``t0`` that had requests (by their start time)."""
    buckets: dict[int, list[Row]] = {}
    for r in rows:
        buckets.setdefault(int(r.start - t0), []).append(r)
    out = []
    for second in sorted(buckets):
        f = figures(buckets[second], duration_s=1.0)
        out.append(Second(float(second), f.rps, f.p50_ms, f.p95_ms, f.p99_ms, f.errors))
    return out


@dataclass(frozen=True)
class Level:
    users: int
    figures: Figures
    over: list[str]  # the thresholds this level crossed, e.g. "p95 812 ms > 500 ms"


@dataclass(frozen=True)
class Saturation:
    levels: list[Level]
    crossed: Level | None  # the first level where p95 or errors crossed its threshold
    rps: float  # the RPS at which they crossed; without a crossing, the highest level's
    users: int

    def text(self) -> str:
        if self.crossed is None:
            return (f"not reached: {self.rps:.1f} RPS at {self.users} users (the ramp's "
                    "highest level) stayed within the p95 and error thresholds")
        return (f"{self.rps:.1f} RPS at {self.users} users: {'; '.join(self.crossed.over)}")


def saturation(rows: Sequence[Row], t0: float, stages: Sequence[tuple[float, int, float]],
               p95_ms: float, error_ratio: float, settle_s: float = 1.0) -> Saturation:
    """The ramp's figures per users level (stage ``[(end_s, users, spawn_rate)]``, ``t0`` the
    ramp's start), and the first level where p95 or the error ratio crossed its threshold.
    The first ``settle_s`` of each level are left out: users are still starting there."""
    levels = []
    begin = 0.0
    for end, users, _rate in stages:
        window = [r for r in rows if begin + settle_s <= r.start - t0 < end]
        f = figures(window, duration_s=max(end - begin - settle_s, 1e-3))
        over = []
        if f.requests and f.p95_ms > p95_ms:
            over.append(f"p95 {f.p95_ms:.0f} ms > {p95_ms:g} ms")
        if f.requests and f.error_ratio > error_ratio:
            over.append(f"errors {f.error_ratio:.2%} > {error_ratio:.2%}")
        levels.append(Level(int(users), f, over))
        begin = end
    crossed = next((lv for lv in levels if lv.over), None)
    if crossed is not None:
        return Saturation(levels, crossed, crossed.figures.rps, crossed.users)
    top = max(levels, key=lambda lv: lv.figures.rps) if levels else None
    return Saturation(levels, None, top.figures.rps if top else 0.0, top.users if top else 0)


def ramp_stages(start_users: int, step_users: int, max_users: int,
                step_s: int) -> list[tuple[float, int, float]]:
    """The ramp's shape: ``start_users``, then ``step_users`` more every ``step_s`` seconds,
    up to ``max_users``; each level spawned within its first second."""
    stages: list[tuple[float, int, float]] = []
    users, end = start_users, 0.0
    while True:
        end += step_s
        stages.append((end, users, float(max(users, 1))))
        if users >= max_users:
            return stages
        users = min(users + step_users, max_users)


@dataclass(frozen=True)
class Breach:
    key: str  # the params key: load_test.thresholds.<name>
    ok: bool
    detail: str


def _u(value: float, unit: str, spec: str = ".4g") -> str:
    return f"{value:{spec}} {unit}".rstrip()


def at_most(key: str, measured: float, limit: float, unit: str, where: str) -> Breach:
    """``measured <= limit``, the detail saying where and by how much it is over."""
    ok = measured <= limit
    by = _u(measured - limit, unit, ".3g") + " over" + (
        f" ({measured / limit:.3g}x)" if limit > 0 else "")
    return Breach(f"load_test.thresholds.{key}", ok,
                  f"{where}: {_u(measured, unit)} {'<=' if ok else '>'} {_u(limit, unit, 'g')}"
                  + ("" if ok else f": {by}"))


def at_least(key: str, measured: float, limit: float, unit: str, where: str) -> Breach:
    """``measured >= limit``, the detail saying where and by how much it is short."""
    ok = measured >= limit
    short = (f": {_u(limit - measured, unit, '.3g')} short ({measured / limit:.0%} of it)"
             if not ok and limit > 0 else "")
    return Breach(f"load_test.thresholds.{key}", ok,
                  f"{where}: {_u(measured, unit)} {'>=' if ok else '<'} {_u(limit, unit, 'g')}"
                  + short)


def latency_breaches(f: Figures, p95_ms: float, p99_ms: float, error_ratio: float,
                     where: str) -> list[Breach]:
    """The latency and error thresholds against one profile's figures."""
    return [at_most("p95_ms", f.p95_ms, p95_ms, "ms", where),
            at_most("p99_ms", f.p99_ms, p99_ms, "ms", where),
            at_most("error_ratio", f.error_ratio, error_ratio, "", where)]


def drain_rate(samples: Sequence[tuple[float, int]], jobs: int, t0: float) -> float | None:
    """Jobs per second from the first enqueue (``t0``) until the queue was first seen empty
    after its peak (``samples`` of (time, depth)); None when it never emptied."""
    if not samples:
        return None
    peak_at = max(range(len(samples)), key=lambda i: samples[i][1])
    for t, depth in samples[peak_at:]:
        if depth == 0 and t > t0:
            return jobs / (t - t0)
    return None
