"""Fixtures for the nodes' tests: the engine and node image once per session, measured."""

from __future__ import annotations

import pytest
from nodes_harness import SshKey

from casera_localcloud import engine
from casera_localcloud.nodes import image, network


@pytest.fixture(scope="session")
def node_image() -> str:
    """The node image, built (or found) once; prints both the first and a cached build."""
    print(f"\n[nodes] {engine.ensure_engine()}")
    network.ensure_network(engine.client())
    first = image.build_image()
    print(f"[nodes] first build: {first.describe()}")
    again = image.build_image()
    print(f"[nodes] second build: {again.describe()}")
    assert not (again.built_rootfs or again.imported or again.built_image)
    return first.image


@pytest.fixture(scope="module")
def ssh_key() -> SshKey:
    return SshKey()
