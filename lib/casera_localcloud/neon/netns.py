"""A client outside the allowlist: a network namespace joined to the host by a veth pair.

Every client on the host itself comes from a host address (loopback, the node bridge), so
proving that the allowlist refuses an address needs a client with an address of its own. The
namespace gets ``10.78.N.2``, the host end ``10.78.N.1``; a host route for each target the
client must reach (the local Neon's listen addresses) and nothing else, so the namespace has no
way out of this machine. The client runs under ``nsenter --net`` (``ip netns exec`` remounts
/sys, see docs/facts.md#this-machine-the-local-cloud). Needs root, iproute2 and nsenter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

_CLIENT = """
import json, sys, psycopg
kw = json.loads(sys.argv[1])
try:
    with psycopg.connect(**kw, connect_timeout=5, prepare_threshold=None) as c:
        print(c.execute('select inet_client_addr()').fetchone()[0])
except Exception as e:
    print(e); sys.exit(3)
"""

_TCP = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
except OSError as e:
    print(e); sys.exit(3)
"""


@dataclass(frozen=True)
class Netns:
    name: str
    host_ip: str
    client_ip: str

    @property
    def _enter(self) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{self.name}"]

    def run_client(self, conninfo: dict[str, Any], timeout: float = 20) -> tuple[bool, str]:
        """Connect with psycopg from inside the namespace: (connected, what it printed:
        ``inet_client_addr()`` on success, the error otherwise)."""
        res = subprocess.run([*self._enter, sys.executable, "-c", _CLIENT,
                              json.dumps(conninfo)], capture_output=True, text=True,
                             timeout=timeout, check=False)
        return res.returncode == 0, (res.stdout + res.stderr).strip()

    def tcp_reaches(self, address: str, port: int, timeout: float = 15) -> tuple[bool, str]:
        """Whether a TCP handshake from the namespace completes: tells a refusal by the
        server apart from a network path that does not exist."""
        res = subprocess.run([*self._enter, sys.executable, "-c", _TCP, address, str(port)],
                             capture_output=True, text=True, timeout=timeout, check=False)
        return res.returncode == 0, (res.stdout + res.stderr).strip()


def _ip(*args: str, netns: str | None = None) -> None:
    prefix = ["nsenter", f"--net=/var/run/netns/{netns}"] if netns else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, text=True)


def create(tag: str, routes: tuple[str, ...] = ()) -> Netns:
    """Make the namespace. ``tag`` keeps names unique per user (a pid, a test name);
    ``routes`` are host addresses (other than the host end) the client must reach."""
    number = _free_subnet(zlib.crc32(f"{tag}/{os.getpid()}".encode()) % 250 + 1)
    ns = Netns(f"casera-neon-{tag}"[:40], f"10.78.{number}.1", f"10.78.{number}.2")
    host_if, ns_if = _ifnames(ns)
    _ip("netns", "add", ns.name)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns.name)
        _ip("addr", "add", f"{ns.host_ip}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("addr", "add", f"{ns.client_ip}/24", "dev", ns_if, netns=ns.name)
        _ip("link", "set", ns_if, "up", netns=ns.name)
        _ip("link", "set", "lo", "up", netns=ns.name)
        for target in routes:
            _ip("route", "add", f"{target}/32", "via", ns.host_ip, netns=ns.name)
    except subprocess.CalledProcessError as exc:
        remove(ns)
        raise RuntimeError(f"could not set up namespace {ns.name}: {exc.stderr.strip()}") \
            from exc
    return ns


def _free_subnet(start: int) -> int:
    """The first 10.78.N.0/24 from ``start`` on that no interface of this host uses yet."""
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                          check=True).stdout
    for step in range(250):
        number = (start + step - 1) % 250 + 1
        if f" 10.78.{number}." not in used:
            return number
    raise RuntimeError("no free 10.78.N.0/24 subnet for a test namespace")


def _ifnames(ns: Netns) -> tuple[str, str]:
    # Interface names are at most 15 characters: derive them from the subnet.
    number = ns.host_ip.split(".")[2]
    return f"cnh{number}x{os.getpid() % 10000}", f"cnn{number}x{os.getpid() % 10000}"


def remove(ns: Netns) -> None:
    host_if, _ = _ifnames(ns)
    subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)


@contextmanager
def namespace(tag: str, routes: tuple[str, ...] = ()) -> Iterator[Netns]:
    ns = create(tag, routes)
    try:
        yield ns
    finally:
        remove(ns)
