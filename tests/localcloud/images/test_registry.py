"""The local registry: a writer on loopback, a read-only reader on the nodes' gateway, the
same images behind both, nothing listening anywhere else."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request

import pytest
import yaml

from casera_localcloud import registry

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def test_reader_config_is_read_only_and_bound_to_the_gateway():
    reader = yaml.safe_load(registry._config_text(registry.READER))
    writer = yaml.safe_load(registry._config_text(registry.WRITER))
    assert reader["http"]["addr"] == "10.77.0.1:5000"
    assert reader["storage"]["maintenance"]["readonly"]["enabled"] is True
    assert reader["storage"]["maintenance"]["uploadpurging"]["enabled"] is False
    assert writer["http"]["addr"] == "127.0.0.1:5000"
    assert "readonly" not in writer["storage"]["maintenance"]
    assert reader["storage"]["filesystem"] == writer["storage"]["filesystem"]


@pytest.mark.localcloud
def test_up_is_idempotent_and_both_listeners_serve_one_store():
    from casera_localcloud import engine
    from casera_localcloud.nodes import network

    network.ensure_network(engine.client())  # the gateway the reader binds to
    registry.up()
    again = registry.up()
    assert all(": running (pid " in line for line in again), again
    catalogs = []
    for host in (registry.PUSH_HOST, registry.NODE_HOST):
        with OPENER.open(f"http://{host}/v2/_catalog", timeout=5) as response:
            catalogs.append(json.load(response))
    assert catalogs[0] == catalogs[1]


@pytest.mark.localcloud
def test_nodes_side_refuses_pushes():
    registry.up()
    if not registry.node_gateway_exists():
        pytest.skip("no nodes' bridge")
    request = urllib.request.Request(
        f"http://{registry.NODE_HOST}/v2/casera/refused/blobs/uploads/", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        OPENER.open(request, timeout=5)
    assert refused.value.code == 405


@pytest.mark.localcloud
def test_listens_only_on_loopback_and_the_gateway():
    registry.up()
    out = subprocess.run(["ss", "-Hltn", "sport = :5000"], capture_output=True, text=True,
                         check=True).stdout
    addresses = {line.split()[3] for line in out.splitlines() if line.strip()}
    assert addresses <= {registry.PUSH_HOST, registry.NODE_HOST}, addresses
    assert registry.PUSH_HOST in addresses
