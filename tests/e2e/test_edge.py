"""The edge on the bootstrapped local cloud, checked from outside as the issue lists it:
HTTPS through the LB presents the origin certificate for the hostname (trusting only the
origin CA), plain http is answered with a redirect, a node refuses 80 and 443 from an address
outside the allowed ranges (a network namespace of this test on the nodes' bridge), the zone
reports Full (strict); and rotating the certificate through bootstrap's parameter loses no
request of a steady probe through the LB. Builds on test_bootstrap.py and leaves the cloud as
it found it (the rotation is rotated back).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from cloudflare import Cloudflare
from e2e_harness import casera, hcloud
from test_bootstrap import PARAMS, changes_per_step, latest_run

from casera.origin_tls import facts, fingerprint_of_der, key_store
from casera.steps.api_endpoint import ApiEndpoint, api_endpoint_for
from casera.steps.dns import record_name
from casera.steps.edge import certificate_name
from casera_localcloud.local_credentials import read_local_secrets

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]
BRIDGE = "casera-local"  # casera_localcloud.nodes.network.BRIDGE
OUTSIDER = "10.77.0.250"  # on the nodes' bridge, in no allowed range
PROBE_RATE_S = 0.1  # the steady probe: 10 requests a second at most, to the LB's loopback


def endpoint() -> ApiEndpoint:
    lb = hcloud().load_balancers.get_by_name(PARAMS.load_balancer.name)
    return api_endpoint_for(PARAMS, lb.public_net.ipv4.ip)


def served_fingerprint(api: ApiEndpoint) -> str:
    return fingerprint_of_der(api.peer_certificate_der())


def test_https_through_the_lb_presents_the_origin_certificate_for_the_hostname() -> None:
    api = endpoint()
    assert api.tls and api.port == 443 and api.hostname == record_name(PARAMS)
    stored = key_store("local").load(certificate_name(PARAMS))
    assert stored is not None, "bootstrap kept no origin certificate"
    assert served_fingerprint(api) == facts(stored[0]).fingerprint
    status, body = api.get("/readyz")
    assert status == 200, body
    # The key made by the run is nowhere in its kept notebook.
    path, _ = latest_run()
    key_lines = [line for line in stored[1].reveal().splitlines() if not line.startswith("-")]
    assert key_lines and not any(line in path.read_text() for line in key_lines)
    # The chain is the origin CA's only: the system's trust store does not know it, and the
    # certificate names the hostname, not the LB's address.
    with pytest.raises(ssl.SSLCertVerificationError), \
            socket.create_connection((api.address, api.port), timeout=5) as raw:
        ssl.create_default_context().wrap_socket(raw, server_hostname=api.hostname).close()
    with pytest.raises(ssl.SSLCertVerificationError):
        ApiEndpoint(api.address, api.port, "other.casera.test", api.ca_file).get("/readyz")


def test_plain_http_is_answered_with_a_redirect_to_https() -> None:
    api = endpoint()
    status, location = ApiEndpoint(api.address, 80, api.hostname, None).redirect_location(
        "/readyz")
    assert status == 301 and location == f"https://{api.hostname}/readyz"


def _ip(*args: str, netns: str | None = None) -> None:
    prefix = ["nsenter", f"--net=/var/run/netns/{netns}"] if netns else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def outsider() -> Iterator[Callable[[str, int], tuple[bool, str]]]:
    """A namespace of this test on the nodes' bridge with its own address: like a machine on
    the internet that bypasses Cloudflare and the LB. Yields connect(address, port)."""
    name, host_if = f"casera-edge-{os.getpid()}", f"ceh{os.getpid() % 100000}"
    ns_if = f"cen{os.getpid() % 100000}"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("link", "set", host_if, "master", BRIDGE)
        _ip("link", "set", host_if, "up")
        _ip("addr", "add", f"{OUTSIDER}/24", "dev", ns_if, netns=name)
        _ip("link", "set", ns_if, "up", netns=name)

        def connect(address: str, port: int) -> tuple[bool, str]:
            done = subprocess.run(
                ["nsenter", f"--net=/var/run/netns/{name}", sys.executable, "-c",
                 "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], "
                 "int(sys.argv[2])), timeout=3).close()\nexcept OSError as e:\n print(e); "
                 "sys.exit(3)", address, str(port)], capture_output=True, text=True,
                timeout=15, check=False)
            return done.returncode == 0, (done.stdout + done.stderr).strip()

        yield connect
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def test_a_node_refuses_80_and_443_from_outside_the_allowed_ranges() -> None:
    nodes = {s.name: s.public_net.ipv4.ip for s in hcloud().servers.get_all()}
    assert len(nodes) == PARAMS.hetzner.server_count
    allowed = PARAMS.load_balancer.node_facing_cidrs or []
    assert f"{OUTSIDER}/32" not in allowed
    with outsider() as connect:
        # The namespace really is on the bridge: it reaches the host's registry there.
        reached, detail = connect("10.77.0.1", 5000)
        assert reached, f"no path from {OUTSIDER} onto the bridge, nothing proven: {detail}"
        for name, ip in sorted(nodes.items()):
            for port in (80, 443):
                ok, detail = connect(ip, port)
                assert not ok, f"{name} {ip}:{port} accepted {OUTSIDER}"
    # ... while the LB's node-facing address (the host here) gets the api on every node.
    for ip in nodes.values():
        socket.create_connection((ip, PARAMS.swarm.api_published_port), timeout=5).close()


def test_the_zone_reports_full_strict_and_https_enforced() -> None:
    cf = Cloudflare(api_token=read_local_secrets()["CASERA_CLOUDFLARE_API_TOKEN"],
                    base_url=PARAMS.cloudflare.api_base, max_retries=0)
    zone = next(iter(cf.zones.list(name=PARAMS.cloudflare.zone))).id
    assert cf.zones.settings.get("ssl", zone_id=zone).value == "strict"
    assert cf.zones.settings.get("always_use_https", zone_id=zone).value == "on"
    assert cf.zones.settings.get("min_tls_version", zone_id=zone).value == "1.2"


class SteadyProbe:
    """GET /readyz over HTTPS through the LB every PROBE_RATE_S, counting failures."""

    def __init__(self, api: ApiEndpoint) -> None:
        self.api, self.ok, self.failed = api, 0, []  # type: ignore[var-annotated]
        self.fingerprints: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = self.api.get("/readyz", timeout=5)
                if status == 200:
                    self.ok += 1
                else:
                    self.failed.append(f"{status} {body[:80]}")
            except OSError as exc:
                self.failed.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(PROBE_RATE_S)

    def __enter__(self) -> SteadyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_rotating_the_certificate_loses_no_request(
        record_property: Callable[[str, object], None]) -> None:
    api = endpoint()
    before = served_fingerprint(api)
    started = time.monotonic()
    with SteadyProbe(api) as probe:
        done = casera("run", "bootstrap", "--env", "local", "-p",
                      "edge.certificate_generation=2")
        assert done.returncode == 0, done.stderr
        rotated = served_fingerprint(api)
        time.sleep(1)
    _, meta = latest_run()
    changed = dict(changes_per_step(meta))
    # A new key and Origin CA certificate, uploaded; the LB switched; the old one deleted.
    assert (changed["origin certificate"], changed["load balancer"],
            changed["old origin certificates"]) == (2, 1, 1), changed
    assert sum(changed.values()) == 4, changed
    assert rotated != before
    assert rotated == facts(key_store("local").load(certificate_name(
        PARAMS, 2))[0]).fingerprint  # type: ignore[index]
    names = [c.name for c in hcloud().certificates.get_all()]
    assert names == [certificate_name(PARAMS, 2)], names
    assert probe.ok > 0 and not probe.failed, probe.failed[:5]
    record_property("measured", f"certificate rotation: {probe.ok} probe requests through the "
                    f"LB, {len(probe.failed)} failed, {time.monotonic() - started:.0f} s")
    # Back to generation 1 (the stored pair is uploaded again): the cloud as the next module
    # expects it, and a second rotation under the same probe.
    with SteadyProbe(api) as probe:
        back = casera("run", "bootstrap", "--env", "local")
        assert back.returncode == 0, back.stderr
    assert probe.ok > 0 and not probe.failed, probe.failed[:5]
    assert [c.name for c in hcloud().certificates.get_all()] == [certificate_name(PARAMS)]
    assert served_fingerprint(api) == before
    # The way back changed the certificate steps and nothing else (the 0-change re-run of a
    # converged bootstrap is test_bootstrap.py's).
    _, meta = latest_run()
    assert [(name, n) for name, n in changes_per_step(meta) if n and name not in (
        "origin certificate", "load balancer", "old origin certificates")] == []
