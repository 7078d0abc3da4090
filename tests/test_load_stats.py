"""The load test's figures and threshold checks, from hand-made per-request rows."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from casera import load_stats
from casera.steps.load_test import neon_max_connections


@dataclass(frozen=True)
class R:
    start: float
    ms: float
    ok: bool = True


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100 ms
    assert load_stats.percentile(values, 50) == 50
    assert load_stats.percentile(values, 95) == 95
    assert load_stats.percentile(values, 99) == 99
    assert load_stats.percentile([7.0], 99) == 7
    assert load_stats.percentile([], 95) == 0
    # few values: p95 errs high (the slowest), never low
    assert load_stats.percentile([1.0, 2.0, 3.0, 400.0], 95) == 400


def test_figures_rps_and_errors() -> None:
    rows = [R(1000 + i * 0.1, 10.0 + i, ok=i % 10 != 0) for i in range(100)]
    f = load_stats.figures(rows, duration_s=10.0)
    assert (f.requests, f.errors, f.rps) == (100, 10, 10.0)
    assert f.error_ratio == pytest.approx(0.1)
    assert (f.p50_ms, f.p95_ms, f.p99_ms) == (59.0, 104.0, 108.0)
    assert "10.0 RPS" in f.text() and "errors 10 (10.00%)" in f.text()
    assert load_stats.figures([]).requests == 0


def test_per_second_buckets_by_start() -> None:
    rows = [R(100.2, 5), R(100.9, 7), R(101.5, 50, ok=False), R(103.0, 9)]
    series = load_stats.per_second(rows, 100.0)
    assert [(s.t, s.rps, s.errors) for s in series] == [(0.0, 2, 0), (1.0, 1, 1), (3.0, 1, 0)]
    assert series[0].p95_ms == 7


def test_ramp_stages_reach_max_users() -> None:
    assert load_stats.ramp_stages(2, 4, 12, 5) == [(5, 2, 2.0), (10, 6, 6.0), (15, 10, 10.0),
                                                   (20, 12, 12.0)]
    assert load_stats.ramp_stages(3, 1, 3, 4) == [(4, 3, 3.0)]


def _level(t0: float, begin: float, end: float, rps: int, ms: float,
           errors: int = 0) -> list[R]:
    n = int((end - begin) * rps)
    return [R(t0 + begin + i / rps, ms, ok=i < n - errors) for i in range(n)]


def test_saturation_is_the_first_level_over_a_threshold() -> None:
    t0 = 5000.0
    stages = [(10.0, 2, 2.0), (20.0, 4, 4.0), (30.0, 8, 8.0)]
    rows = (_level(t0, 0, 10, 10, 100) + _level(t0, 10, 20, 20, 300)
            + _level(t0, 20, 30, 25, 900))
    sat = load_stats.saturation(rows, t0, stages, p95_ms=500, error_ratio=0.01)
    assert [lv.users for lv in sat.levels] == [2, 4, 8]
    assert sat.crossed is not None and sat.users == 8
    assert sat.rps == pytest.approx(25, rel=0.05)
    assert sat.crossed.over == ["p95 900 ms > 500 ms"]
    assert "25.0 RPS at 8 users" in sat.text()
    # errors cross too: at the second level here
    rows = _level(t0, 0, 10, 10, 100) + _level(t0, 10, 20, 20, 100, errors=10)
    sat = load_stats.saturation(rows, t0, stages[:2], p95_ms=500, error_ratio=0.01)
    assert sat.users == 4 and sat.crossed is not None
    assert sat.crossed.over[0].startswith("errors")


def test_saturation_not_reached_reports_the_top_level() -> None:
    t0 = 0.0
    stages = [(10.0, 2, 2.0), (20.0, 4, 4.0)]
    rows = _level(t0, 0, 10, 10, 100) + _level(t0, 10, 20, 20, 100)
    sat = load_stats.saturation(rows, t0, stages, p95_ms=500, error_ratio=0.01)
    assert sat.crossed is None and sat.users == 4
    assert sat.text().startswith("not reached")


def test_threshold_breach_names_key_where_and_by_how_much() -> None:
    f = load_stats.Figures(100, 3, 10, 10, 20, 40, 80)
    found = {b.key: b for b in load_stats.latency_breaches(f, p95_ms=0.001, p99_ms=100,
                                                           error_ratio=0.01, where="steady")}
    p95 = found["load_test.thresholds.p95_ms"]
    assert not p95.ok
    assert p95.detail.startswith("steady: 40 ms > 0.001 ms: 40 ms over (4e+04x)")
    assert found["load_test.thresholds.p99_ms"].ok
    errors = found["load_test.thresholds.error_ratio"]
    assert not errors.ok and "0.03 > 0.01" in errors.detail
    short = load_stats.at_least("min_rps", 4, 5, "RPS", "steady")
    assert not short.ok and "1 RPS short (80% of it)" in short.detail
    assert load_stats.at_least("min_rps", 6, 5, "RPS", "steady").ok


def test_drain_rate_from_depth_samples() -> None:
    samples = [(0.5, 900), (1.0, 1000), (3.0, 400), (5.0, 0)]
    assert load_stats.drain_rate(samples, 1000, 0.0) == 200
    assert load_stats.drain_rate([(1.0, 1000), (5.0, 10)], 1000, 0.0) is None
    assert load_stats.drain_rate([], 10, 0.0) is None


def test_neon_max_connections_per_compute_size() -> None:
    # https://neon.com/docs/connect/connection-pooling
    assert neon_max_connections(0.25) == 104
    assert neon_max_connections(1) == 419
    assert neon_max_connections(1.5) == 839  # between sizes: the next size up
    assert neon_max_connections(16) == 4000


def _ctx_with(measured: object) -> object:
    from casera.context import RunContext
    from casera.params import load_params
    from casera.steps.load_test import STATE

    ctx = RunContext(env="local", params=load_params("local"), secrets=None)  # type: ignore[arg-type]
    ctx.shared[STATE] = measured
    return ctx


def test_capacity_advice_names_the_limits_seen_and_the_local_caveat() -> None:
    from casera.providers.pgbouncer import Pool
    from casera.steps.api_endpoint import ApiEndpoint
    from casera.steps.load_test import Measured, Profile, capacity_advice

    t0 = 0.0
    stages = [(10.0, 2, 2.0), (20.0, 14, 14.0)]
    rows = _level(t0, 0, 10, 10, 100) + _level(t0, 10, 20, 40, 100)  # 40 of 70 RPS offered
    m = Measured(ApiEndpoint("127.0.1.1", 443, None, None))
    waiting = Pool("casera", "casera", 20, 3, 10, 0, 0, 0.2, "transaction")
    m.profiles["ramp"] = Profile("ramp", t0, rows, stages, [(1.0, [waiting])])
    m.saturation = load_stats.saturation(rows, t0, stages, p95_ms=500, error_ratio=0.01)
    m.burst = {"drain_rate": 100.0, "enqueue_rate": 5000.0}
    notes = {c.name: c.detail for c in capacity_advice(_ctx_with(m)).checks}
    assert notes["figures"] == "local figures measure the method, not Hetzner's hardware"
    assert notes["limit 1"].startswith("the pooler: up to 3 client(s) waited")
    assert notes["limit 2"].startswith("the api's throughput: 40.0 RPS served of 70 offered")
    assert notes["limit 3"].startswith("worker drain: 100 jobs/s against 5000 jobs/s")
