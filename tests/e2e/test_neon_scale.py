"""The bootstrap on Neon's Scale plan, where the IP allowlist exists and is enforced.

Runs AFTER tests/e2e/test_bootstrap.py, on the cloud it bootstrapped (file order does that):
it brings nothing down or up. It moves the local Neon project to Scale, re-runs the bootstrap
as CI does, and checks that the allowlist holds exactly the nodes and the operator's real
source address, that the run is green, that an address outside the list is refused while
the app stays ready through the load balancer. Then it clears the list and moves the project
back to Launch (the seed's plan), leaving the cloud as it found it.
"""

from __future__ import annotations

import ipaddress
import shutil

import psycopg
import pytest
import requests
from e2e_harness import casera, hcloud
from test_bootstrap import PARAMS, latest_run

from casera.db_roles import credential_for
from casera.operator_secrets import SecretStore
from casera.steps.api_endpoint import api_endpoint_for
from casera_localcloud.local_credentials import read_local_secrets
from casera_localcloud.neon.netns import namespace

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]
NEON = PARAMS.neon.api_endpoint
PROJECT = f"{NEON}/projects/{PARAMS.neon.project_id}"


def neon(method: str, url: str, **kwargs: object) -> dict:
    answer = requests.request(method, url, timeout=30, headers={
        "Authorization": f"Bearer {read_local_secrets()['CASERA_NEON_API_KEY']}"}, **kwargs)
    assert answer.status_code < 300, answer.text
    return answer.json()


def allowlist() -> list[str]:
    return neon("GET", PROJECT)["project"]["settings"]["allowed_ips"]["ips"]


def plan() -> str:
    return neon("GET", PROJECT)["project"]["owner"]["subscription_type"]


def login(host: str, port: int) -> dict:
    # The app's credential: after a DB password rotation, the other login role's.
    cred = credential_for("local", PARAMS.neon.role, SecretStore("local"))
    return {"host": host, "port": port, "user": cred.role, "dbname": PARAMS.neon.database,
            "password": cred.password.reveal(), "sslmode": "require"}


def operator_source_as_neon_sees_it() -> str:
    """Ground truth, not the step's reasoning: the direct endpoint has no pooler in front, so
    ``inet_client_addr()`` there is the address this machine's connections arrive from."""
    n = PARAMS.neon
    with psycopg.connect(**login(n.hostaddr or n.direct_host, n.direct_port),
                         connect_timeout=10) as conn:
        row = conn.execute("select host(inet_client_addr())").fetchone()
    assert row and row[0], "the direct endpoint reported no client address"
    return str(row[0])


@pytest.fixture(scope="module")
def on_scale():
    servers = {s.name: s.public_net.ipv4.ip for s in hcloud().servers.get_all()}
    assert sorted(servers) == PARAMS.server_names(), (
        "run after tests/e2e/test_bootstrap.py, on the cloud it bootstrapped", servers)
    assert plan() == "launch" and allowlist() == [], "the local Neon is not as the seed has it"
    neon("POST", f"{NEON}/_emulator/plan", json={"plan": "scale"})
    try:
        yield servers
    finally:
        # Left as found: no allowlist, the seed's plan (the emulator refuses Launch while a
        # list exists, so the order matters).
        neon("PATCH", PROJECT, json={"project": {"settings": {"allowed_ips": {"ips": []}}}})
        neon("POST", f"{NEON}/_emulator/plan", json={"plan": "launch"})
        assert plan() == "launch" and allowlist() == []


def test_bootstrap_on_scale_sets_exactly_nodes_and_operator(on_scale) -> None:
    operator = operator_source_as_neon_sees_it()
    done = casera("run", "bootstrap", "--env", "local")
    assert done.returncode == 0, done.stderr
    _, meta = latest_run()
    assert meta["status"] == "succeeded", meta.get("failed_step")
    steps = {s["step"]: s for s in meta["steps"]}
    allow = steps["neon ip allowlist"]
    assert allow["ok"] and allow["changed"] == len(on_scale) + 1, allow
    assert steps["neon connection"]["ok"], steps["neon connection"]

    expected = {f"{ip}/32" for ip in on_scale.values()} | {f"{operator}/32"}
    assert {str(ipaddress.ip_network(ip)) for ip in allowlist()} == expected
    # The SSH operator CIDR is where the nodes see the operator from, not Neon.
    ssh_cidrs = {str(ipaddress.ip_network(c)) for c in PARAMS.ssh.operator_cidrs}
    assert not (ssh_cidrs - {f"{operator}/32"}) & set(allowlist())


def test_a_second_run_on_scale_changes_nothing(on_scale) -> None:
    before = sorted(allowlist())
    done = casera("run", "bootstrap", "--env", "local")
    assert done.returncode == 0, done.stderr
    _, meta = latest_run()
    changed = {s["step"]: s["changed"] for s in meta["steps"] if s["changed"]}
    assert meta["status"] == "succeeded" and not changed, changed
    assert sorted(allowlist()) == before


def test_an_address_outside_the_allowlist_is_refused(on_scale) -> None:
    if not shutil.which("nsenter"):
        pytest.fail("nsenter (util-linux) is needed for the client outside the allowlist")
    assert len(allowlist()) == len(on_scale) + 1, "the Scale bootstrap above did not run"
    n = PARAMS.neon
    # The local Neon listens on the node bridge's gateway, where the nodes reach it.
    target = n.node_hostaddr or "10.77.0.1"
    with namespace("e2e", routes=(target,)) as ns:
        assert f"{ns.client_ip}/32" not in allowlist()
        for port in (n.pooler_port, n.direct_port):
            reached, detail = ns.tcp_reaches(target, port)
            assert reached, f"no network path to {target}:{port}, so nothing is proven: {detail}"
            ok, detail = ns.run_client(login(target, port))
            assert not ok, f"{target}:{port} accepted {ns.client_ip}: {detail}"
            assert "pg_hba" in detail or "rejected" in detail, detail


def test_the_app_stays_ready_through_the_load_balancer(on_scale) -> None:
    lb = hcloud().load_balancers.get_by_name(PARAMS.load_balancer.name)
    endpoint = api_endpoint_for(PARAMS, lb.public_net.ipv4.ip)
    api = endpoint.requests_session()
    hosts = set()
    for _ in range(3 * len(on_scale)):
        ready = api.get(endpoint.url("/readyz"), timeout=10)
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["checks"]["postgres"]["ok"] and body["checks"]["postgres"]["tls"], body
        hosts.add(body["host"])
    print(f"/readyz answered from {len(hosts)} replica(s): {sorted(hosts)}")
