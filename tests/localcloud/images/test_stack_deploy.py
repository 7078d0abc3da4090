"""The stack file on three real nodes: images pulled from the local registry through the
bridge, every service converges, the api's /readyz is green (Postgres through PgBouncer with
TLS, reached by the pooler's name pinned in extra_hosts; Redis over the overlay), a job written
through the api is consumed by a worker, and Dozzle answers on its manager's loopback only:
through an SSH tunnel and on the node itself, while 9999 is refused from this machine and
from the other nodes. These nodes have no firewall, so "refused" proves the binding alone.

As bootstrap does, the external overlay network and the versioned secrets exist before
``docker stack deploy``; the settings are params/local.yaml's (``settings_from_params``).

Its own three nodes (casera-stk-*), so it runs beside the nodes' tests; deleted afterwards.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fabric import Connection

from casera.params import load_params
from casera.progress import wait_for
from casera.providers.ssh import http_through_tunnel, probe_port
from casera.stack import DOZZLE_PORT, SECRETS, render_stack
from casera_localcloud import engine, images, registry
from casera_localcloud.images import local_stack_settings
from casera_localcloud.nodes import Nodes, network
from casera_localcloud.nodes.backend import container_name

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]

NAMES = ["casera-stk-1", "casera-stk-2", "casera-stk-3"]
STACK = "casera"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Cluster:
    def __init__(self, nodes: Nodes, ips: dict[str, str]) -> None:
        self.nodes, self.ips = nodes, ips
        self.key: paramiko.PKey | None = None

    def sh(self, name: str, command: str, timeout: float = 120) -> str:
        code, out = self.nodes.run(name, command, timeout)
        assert code == 0, f"{name}: {command}: exit {code}: {out}"
        return out

    def put(self, name: str, path: str, text: str) -> None:
        data = text.encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
        self.nodes.client.containers.get(container_name(name)).put_archive("/", buffer.getvalue())


@pytest.fixture(scope="module")
def cluster() -> Any:
    engine.ensure_engine()
    client = engine.client(timeout=300)
    network.ensure_network(client)
    print("\n" + "\n".join(images.up()))  # after the bridge, so the nodes' registry listens
    nodes = Nodes(client)
    for name in NAMES:  # leftovers of an interrupted run
        nodes.delete_node(name)
    # An operator key on root, as Hetzner places the project's keys, for the SSH tunnel.
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(Ed25519PrivateKey.generate(
        ).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                        serialization.NoEncryption()).decode()))
    public = f"{key.get_name()} {key.get_base64()} casera-stk-test"
    with ThreadPoolExecutor(len(NAMES)) as pool:
        ips = dict(zip(NAMES, pool.map(
            lambda n: nodes.create_node({"name": n, "id": 9500 + NAMES.index(n)}, [public],
                                        None), NAMES), strict=True))
    c = Cluster(nodes, ips)
    c.key = key
    first = NAMES[0]
    c.sh(first, f"docker swarm init --advertise-addr {ips[first]}")
    token = c.sh(first, "docker swarm join-token -q manager").strip()
    for name in NAMES[1:]:
        c.sh(name, f"docker swarm join --token {token} {ips[first]}:2377")
    c.sh(first, f"docker node update --label-add casera.redis=true {first}")
    yield c
    for name in NAMES:
        nodes.delete_node(name)


def _service_replicas(cluster: Cluster) -> dict[str, str]:
    out = cluster.sh(NAMES[0], "docker service ls --format '{{.Name}} {{.Replicas}}'")
    return dict(line.split()[:2] for line in out.splitlines() if line.strip())


def _http(ip: str, port: int, path: str, body: dict[str, Any] | None = None
          ) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{ip}:{port}{path}", data=data,
                                     method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with OPENER.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_stack_deploys_converges_and_serves(cluster: Cluster, postgres_for_nodes) -> None:
    pg = postgres_for_nodes
    first = NAMES[0]
    assert registry.node_gateway_exists()
    # The test's PgBouncer listens on a port of its own, on the address the nodes reach.
    params = load_params("local", {"neon.pooler_port": pg.pooler_port})
    assert params.neon.node_hostaddr == registry.NODE_GATEWAY
    assert (params.neon.role, params.neon.database) == (pg.user, pg.dbname)
    overlay = params.swarm.overlay_network
    assert params.swarm.overlay_encrypted is False  # no ESP in this kernel
    cluster.sh(first, f"docker network create --driver overlay --attachable {overlay}")
    options = cluster.sh(first, f"docker network inspect --format '{{{{json .Options}}}}' "
                                f"{overlay}").strip()
    assert "encrypted" not in options

    secrets = {name: f"casera_{name}_v1" for name in SECRETS}
    values = {name: "planted-" + os.urandom(6).hex() for name in SECRETS}
    values["db_password"] = pg.password
    for name, docker_name in secrets.items():
        cluster.put(first, f"/root/secret-{name}", values[name])
        cluster.sh(first, f"docker secret create {docker_name} /root/secret-{name} && "
                          f"rm /root/secret-{name}")
    gid = int(cluster.sh(first, "stat -c %g /var/run/docker.sock").strip())
    settings = local_stack_settings(secrets, docker_socket_gid=gid, params=params)
    assert settings["database"]["host"] == params.neon.pooler_host  # a name, not an address
    cluster.put(first, "/root/casera-stack.yml", render_stack(settings))
    started = time.monotonic()
    print(cluster.sh(first, f"docker stack deploy -c /root/casera-stack.yml {STACK}"))

    wanted = {f"{STACK}_{name}": f"{count}/{count}"
              for name, count in settings["replicas"].items()}

    def converged() -> bool:
        return _service_replicas(cluster) == wanted

    try:
        wait_for("every service at its replica count", converged, 300, interval=3)
    finally:
        print(_service_replicas(cluster))
        print(cluster.sh(first, "docker service ps --no-trunc --format "
                                "'{{.Name}} {{.Node}} {{.CurrentState}} {{.Error}}' "
                                f"$(docker stack services -q {STACK})"))
    print(f"converged in {time.monotonic() - started:.0f} s")

    redis_node = cluster.sh(first, f"docker service ps -f desired-state=running "
                                   f"--format '{{{{.Node}}}}' {STACK}_redis").strip()
    assert redis_node == first  # the label pins it
    dozzle_node = cluster.sh(first, f"docker service ps -f desired-state=running "
                                    f"--format '{{{{.Node}}}}' {STACK}_dozzle").strip()
    assert dozzle_node in NAMES  # all three are managers here

    # Host-mode port: the nodes that run an api task answer on the published port.
    port = settings["network"]["api_published_port"]
    api_nodes = set(cluster.sh(first, f"docker service ps -f desired-state=running "
                                      f"--format '{{{{.Node}}}}' {STACK}_api").split())
    ip = cluster.ips[sorted(api_nodes)[0]]

    def ready() -> dict[str, Any] | None:
        status, body = _http(ip, port, "/readyz")
        return body if status == 200 else None

    body = wait_for("the api's /readyz", ready, 60, interval=2)
    assert body["checks"]["postgres"]["tls"] is True and body["checks"]["redis"]["ok"]
    status, sources = _http(ip, port, "/secret-sources")
    # the backup service's alone
    backup_key = {"b2_backups_key_id", "b2_backups_key", "b2_pgdump_key_id", "b2_pgdump_key"}
    assert sources["secrets"] == {name: "file" for name in set(SECRETS) - backup_key}
    assert not any(value in json.dumps(sources) for value in values.values())

    # The worker never gets the uploads (read/write) key.
    worker_secrets = json.loads(cluster.sh(
        first, f"docker service inspect --format "
               f"'{{{{json .Spec.TaskTemplate.ContainerSpec.Secrets}}}}' {STACK}_worker"))
    assert {s["File"]["Name"] for s in worker_secrets} == set(SECRETS) - backup_key - {
        "b2_uploads_key_id", "b2_uploads_key"}

    status, item = _http(ip, port, "/items", {"name": "through-the-stack"})
    assert status == 201, item

    def processed() -> dict[str, Any] | None:
        row = _http(ip, port, f"/items/{item['id']}")[1]
        return row if row.get("processed_at") else None

    row = wait_for("a worker to process the item", processed, 60, interval=1)
    assert row["processed_by"]

    # Dozzle: on the node's loopback only. Nothing is published...
    published = cluster.sh(first, f"docker service inspect {STACK}_dozzle "
                                  "--format '{{json .Endpoint.Ports}}'").strip()
    assert published in ("null", "[]")
    # ... it answers on the node itself ...
    fetch = ("python3 -c \"import urllib.request; print(urllib.request.urlopen("
             f"'http://127.0.0.1:{DOZZLE_PORT}/api/containers', timeout=5).read().decode())\"")
    out = wait_for("Dozzle on its node's loopback", lambda: (lambda r: r[1] if r[0] == 0
                   else None)(cluster.nodes.run(dozzle_node, fetch, 30)), 60, interval=2)
    assert f"{STACK}_dozzle" in out  # it lists its own node's containers
    # ... and through an SSH tunnel, as an operator reaches it (the runbook's own probe).
    ssh_conn = Connection(cluster.ips[dozzle_node], user="root", port=22, connect_timeout=10,
                          connect_kwargs={"pkey": cluster.key, "allow_agent": False,
                                          "look_for_keys": False})
    try:
        status, body = http_through_tunnel(ssh_conn, DOZZLE_PORT, "/healthcheck")
    finally:
        ssh_conn.close()
    assert (status, body) == (200, '{"status": "ok"}')
    # From outside the node, 9999 is refused: from this machine, on every node ...
    for name, node_ip in cluster.ips.items():
        assert probe_port(node_ip, DOZZLE_PORT, 3) == (False, "refused"), name
    # ... and from another node of the cluster, to Dozzle's node.
    peer = next(n for n in NAMES if n != dozzle_node)
    code, out = cluster.nodes.run(peer, (
        "python3 -c \"import socket; socket.create_connection("
        f"('{cluster.ips[dozzle_node]}', {DOZZLE_PORT}), timeout=3)\""), 30)
    assert code != 0 and "ConnectionRefusedError" in out, out

    logs = cluster.sh(first, f"docker service logs --raw {STACK}_api 2>&1; "
                             f"docker service logs --raw {STACK}_worker 2>&1")
    assert not any(value in logs for value in values.values())
