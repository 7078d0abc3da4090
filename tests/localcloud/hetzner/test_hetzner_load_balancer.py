"""The load balancer through hcloud: a real TCP proxy on a loopback port, round-robin over
healthy targets, with HTTP health checks against little HTTP servers on 127.0.0.x."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from hcloud import APIException
from hcloud.images.domain import Image
from hcloud.load_balancer_types.domain import LoadBalancerType
from hcloud.load_balancers.domain import (
    LoadBalancerHealthCheck,
    LoadBalancerHealthCheckHttp,
    LoadBalancerService,
    LoadBalancerTarget,
    LoadBalancerTargetLabelSelector,
)
from hcloud.locations.domain import Location
from hcloud.server_types.domain import ServerType
from hetzner_harness import Running


class Backend(ThreadingHTTPServer):
    """A target: answers ``/`` with its address, ``/health`` with 200 or 500."""

    daemon_threads = True
    healthy = True


class _Handler(BaseHTTPRequestHandler):
    server: Backend

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            status, body = (200, b"ok") if self.server.healthy else (500, b"sick")
        else:
            status, body = 200, self.server.server_address[0].encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    """HTTP servers on 127.0.0.11 and .12 (the first two node addresses), same port."""
    first = Backend(("127.0.0.11", 0), _Handler)
    second = Backend(("127.0.0.12", first.server_address[1]), _Handler)
    for backend in (first, second):
        threading.Thread(target=backend.serve_forever, daemon=True).start()
    yield [first, second]
    for backend in (first, second):
        backend.shutdown()
        backend.server_close()


def wait_until(what: str, probe: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def answers(port: int, count: int) -> list[str]:
    return [requests.get(f"http://127.0.0.1:{port}/", timeout=5).content.decode()
            for _ in range(count)]


def test_load_balancer_forwards_to_healthy_targets_only(emulator: Running,
                                                        backends: list[Backend]) -> None:
    client = emulator.client()
    port = backends[0].server_address[1]
    for name in ("web-1", "web-2"):
        client.servers.create(name=name, server_type=ServerType(name="cx23"),
                              image=Image(name="docker-ce"), labels={"role": "web"}
                              ).action.wait_until_finished()
    backends[1].healthy = False

    service = LoadBalancerService(
        protocol="http", listen_port=80, destination_port=port, proxyprotocol=False,
        health_check=LoadBalancerHealthCheck(
            protocol="http", port=port, interval=1, timeout=1, retries=1,
            http=LoadBalancerHealthCheckHttp(path="/health", status_codes=["2??"],
                                             response="ok", tls=False)))
    created = client.load_balancers.create(
        name="casera-lb", load_balancer_type=LoadBalancerType(name="lb11"),
        location=Location(name="fsn1"), services=[service],
        targets=[LoadBalancerTarget(type="label_selector", label_selector=(
            LoadBalancerTargetLabelSelector("role=web")))])
    created.action.wait_until_finished()
    lb = created.load_balancer
    assert lb.public_net.ipv4.ip == "127.0.0.1"
    raw = emulator.raw("GET", f"/load_balancers/{lb.id}").json()["load_balancer"]
    local_port = raw["services"][0]["emulator_listen_port"]
    assert local_port in emulator.app.lb_ports

    def health() -> dict[str, str]:
        target = client.load_balancers.get_by_id(lb.id).targets[0]
        return {client.servers.get_by_id(t.server.id).name: t.health_status[0].status
                for t in target.targets}

    wait_until("web-1 healthy, web-2 unhealthy",
               lambda: health() == {"web-1": "healthy", "web-2": "unhealthy"})
    assert set(answers(local_port, 4)) == {"127.0.0.11"}

    backends[1].healthy = True
    wait_until("both healthy", lambda: set(health().values()) == {"healthy"})
    assert sorted(answers(local_port, 4)) == ["127.0.0.11", "127.0.0.11",
                                              "127.0.0.12", "127.0.0.12"]
    web1 = emulator.raw("GET", "/servers", params={"name": "web-1"}).json()["servers"][0]
    assert web1["load_balancers"] == [lb.id]

    # Replace the selector by one server: traffic follows at once.
    web2 = client.servers.get_by_name("web-2")
    lb.remove_target(lb.targets[0]).wait_until_finished()
    lb.add_target(LoadBalancerTarget(type="server", server=web2)).wait_until_finished()
    wait_until("web-2 healthy as a server target", lambda: client.load_balancers.get_by_id(
        lb.id).targets[0].health_status[0].status == "healthy")
    assert set(answers(local_port, 3)) == {"127.0.0.12"}
    with pytest.raises(APIException) as err:
        lb.add_target(LoadBalancerTarget(type="server", server=web2))
    assert err.value.code == "target_already_defined"

    # A tcp check and a new destination port: the proxy follows update_service.
    lb.update_service(LoadBalancerService(
        listen_port=80, protocol="tcp",
        health_check=LoadBalancerHealthCheck(protocol="tcp", port=port, interval=2,
                                             timeout=1, retries=1))).wait_until_finished()
    svc = client.load_balancers.get_by_id(lb.id).services[0]
    assert (svc.protocol, svc.health_check.protocol, svc.health_check.interval) == (
        "tcp", "tcp", 2)
    wait_until("tcp check passes", lambda: client.load_balancers.get_by_id(
        lb.id).targets[0].health_status[0].status == "healthy")
    assert set(answers(local_port, 2)) == {"127.0.0.12"}

    lb.add_service(LoadBalancerService(
        protocol="tcp", listen_port=8080, destination_port=port, proxyprotocol=False,
        health_check=LoadBalancerHealthCheck(protocol="tcp", port=port, interval=1,
                                             timeout=1, retries=1))).wait_until_finished()
    assert len(client.load_balancers.get_by_id(lb.id).services) == 2
    lb.delete_service(LoadBalancerService(listen_port=8080)).wait_until_finished()

    lb.delete()
    with socket.socket() as sock:
        sock.settimeout(2)
        assert sock.connect_ex(("127.0.0.1", local_port)) != 0  # the listener is gone
    assert client.load_balancers.get_all() == []


def test_deleting_a_target_server_removes_it_from_the_load_balancer(
        emulator: Running) -> None:
    client = emulator.client()
    server = client.servers.create(name="solo", server_type=ServerType(name="cx23"),
                                   image=Image(name="docker-ce"))
    server.action.wait_until_finished()
    lb = client.load_balancers.create(
        name="lb", load_balancer_type=LoadBalancerType(name="lb11"),
        location=Location(name="nbg1"),
        targets=[LoadBalancerTarget(type="server", server=server.server)]).load_balancer
    assert len(lb.targets) == 1
    client.servers.delete(server.server).wait_until_finished()
    assert client.load_balancers.get_by_id(lb.id).targets == []


def test_label_selector_targets_follow_new_and_relabelled_servers(emulator: Running) -> None:
    client = emulator.client()
    lb = client.load_balancers.create(
        name="lb", load_balancer_type=LoadBalancerType(name="lb11"),
        location=Location(name="hel1"),
        targets=[LoadBalancerTarget(type="label_selector", label_selector=(
            LoadBalancerTargetLabelSelector("role=api")))]).load_balancer
    assert lb.targets[0].targets == []

    def members() -> list[int]:
        return [t.server.id for t in client.load_balancers.get_by_id(lb.id).targets[0].targets]

    first = client.servers.create(name="api-1", server_type=ServerType(name="cx23"),
                                  image=Image(name="docker-ce"), labels={"role": "api"})
    first.action.wait_until_finished()
    assert members() == [first.server.id]
    client.servers.get_by_id(first.server.id).update(labels={"role": "worker"})
    assert members() == []


@pytest.mark.parametrize("retries", [0, 6])
def test_health_check_retries_outside_one_to_five_are_refused(emulator: Running,
                                                               retries: int) -> None:
    # Hetzner: "[health_check.healthCheckRetries => [Must be between 1 and 5.]]"
    # (hetznercloud/terraform-provider-hcloud#1162); the emulator had taken 0.
    client = emulator.client()
    service = LoadBalancerService(
        protocol="tcp", listen_port=80, destination_port=8080, proxyprotocol=False,
        health_check=LoadBalancerHealthCheck(protocol="tcp", port=8080, interval=3, timeout=2,
                                             retries=retries))
    with pytest.raises(APIException) as err:
        client.load_balancers.create(name=f"casera-lb-{retries}",
                                     load_balancer_type=LoadBalancerType(name="lb11"),
                                     location=Location(name="fsn1"), services=[service])
    assert err.value.code == "invalid_input"
    assert "retries" in str(err.value.details), err.value.details
    assert client.load_balancers.get_all() == []
