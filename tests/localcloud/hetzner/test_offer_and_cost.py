"""Preflight's server type check and the cost summary, against the emulator's catalog
through the real hcloud client (fake node backend)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hcloud.images.domain import Image
from hcloud.load_balancer_types.domain import LoadBalancerType
from hcloud.locations.domain import Location
from hcloud.server_types.domain import ServerType
from hetzner_harness import TOKEN, Running

from casera.context import RunContext
from casera.operator_secrets import SecretStore
from casera.params import load_params
from casera.result import ChecksFailed
from casera.steps import preflight, summary

REPO = Path(__file__).resolve().parents[3]


def make_ctx(tmp_path: Path, emulator: Running, **overrides: object) -> RunContext:
    params = load_params("local", path=REPO / "params" / "local.yaml", overrides={
        "hetzner.api_endpoint": emulator.url, **overrides})
    secrets = SecretStore("local", environ={"CASERA_HCLOUD_TOKEN": TOKEN},
                          file=tmp_path / "none.env")
    return RunContext(env="local", params=params, secrets=secrets, interactive=False)


def test_a_type_offered_where_the_params_put_it_is_green(tmp_path: Path,
                                                         emulator: Running) -> None:
    result = preflight.verify_server_type_offered(
        make_ctx(tmp_path, emulator, **{"hetzner.location": "nbg1"}))
    assert result.ok and [c.name for c in result.checks] == ["offered", "available"]
    assert result.checks[0].detail == "cx33 is offered in nbg1"


def test_cx33_in_ashburn_is_refused_before_any_change_naming_what_is_offered(
        tmp_path: Path, emulator: Running) -> None:
    ctx = make_ctx(tmp_path, emulator, **{"hetzner.location": "ash"})
    with pytest.raises(ChecksFailed) as caught:
        preflight.verify_server_type_offered(ctx)
    detail = caught.value.result.failed_checks[0].detail
    assert detail.startswith("cx33 is not offered in ash (only in fsn1, hel1, nbg1). Fix: ")
    # The offered types come from the API (the emulator's catalog), not from the code.
    assert "offered in ash (ccx13, ccx23)" in detail
    assert [a for a in emulator.answers if a[0] != "GET"] == []  # nothing was asked to change


def test_an_unknown_type_is_refused(tmp_path: Path, emulator: Running) -> None:
    ctx = make_ctx(tmp_path, emulator, **{"hetzner.server_type": "cx99"})
    with pytest.raises(ChecksFailed, match="Hetzner has no server type 'cx99'"):
        preflight.verify_server_type_offered(ctx)


def _build(emulator: Running, location: str = "fsn1", with_lb: bool = True) -> None:
    client = emulator.client()
    for i in (1, 2, 3):
        created = client.servers.create(
            name=f"casera-local-{i}", server_type=ServerType(name="cx33"),
            image=Image(name="docker-ce"), location=Location(name=location),
            labels={"cluster": "casera-local"})
        created.action.wait_until_finished(max_retries=200)
    if with_lb:
        client.load_balancers.create(name="casera-local",
                                     load_balancer_type=LoadBalancerType(name="lb11"),
                                     location=Location(name=location))


def test_monthly_cost_reads_eur_prices_from_the_api(tmp_path: Path, emulator: Running) -> None:
    _build(emulator)
    result = summary.monthly_cost(make_ctx(tmp_path, emulator))
    checks = {c.name: c for c in result.checks}
    assert result.ok
    assert checks["currency"].kind == "info" and checks["currency"].detail.startswith("EUR")
    nodes = checks["3 x cx33 in fsn1"]
    assert nodes.kind == "check"
    assert nodes.detail.startswith("6.49 net / 7.72 gross EUR each, 19.47 net a month; "
                                   "seed 19.77 USD, difference -0.30, -1.5% in figures as "
                                   "quoted (EUR vs USD: no exchange rate assumed)")
    lb = checks["load balancer lb11 in fsn1"]
    assert lb.detail.startswith("5.39 net / 6.41 gross EUR; seed 5.99 USD")
    total = checks["Hetzner total"]
    # A sum, not a verdict: information only, never a literal green check.
    assert total.kind == "info"
    assert total.detail.startswith("24.86 net / 29.58 gross EUR a month; seed 25.76 USD")


def test_the_difference_to_the_seed_in_one_currency(tmp_path: Path, emulator: Running,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Were the seed in the API's currency, the difference is shown, sign and share."""
    monkeypatch.setattr(summary, "SEED", summary.SeedEstimate(currency="EUR"))
    _build(emulator, with_lb=False)
    result = summary.monthly_cost(make_ctx(tmp_path, emulator))
    nodes = {c.name: c for c in result.checks}["3 x cx33 in fsn1"]
    assert nodes.detail.endswith("seed 19.77 EUR, difference -0.30, -1.5%")


def test_a_server_with_no_listed_price_is_red(tmp_path: Path, emulator: Running,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _build(emulator, with_lb=False)
    from casera_localcloud.hetzner import catalog
    cx33 = catalog.find(catalog.SERVER_TYPES, "cx33")
    assert cx33 is not None
    monkeypatch.setitem(cx33, "prices", [p for p in cx33["prices"] if p["location"] != "fsn1"])
    with pytest.raises(ChecksFailed, match="the API lists no price for cx33 in fsn1"):
        summary.monthly_cost(make_ctx(tmp_path, emulator))


def test_the_seed_figures_live_in_one_place() -> None:
    seed = summary.SEED
    assert (seed.currency, seed.node_monthly, seed.load_balancer_monthly) == (
        "USD", Decimal("6.59"), Decimal("5.99"))
    source = Path(summary.__file__).read_text()
    assert source.count('Decimal("6.59")') == 1 and source.count('Decimal("5.99")') == 1
