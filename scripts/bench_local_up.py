#!/usr/bin/env python3
"""Benchmark of the nodes part of ``casera local up`` (a report, not a test).

Measures: a first ``up`` (with ``--cold``: the node image and its cached root filesystem are
removed first, so debootstrap really runs), a second ``up`` (everything cached; the goal is
under 30 s), and three nodes created in parallel until each answers SSH with the key given.

    python scripts/bench_local_up.py [--cold] [--down-between]

Run as root on the machine that runs the local cloud. The three nodes it makes
(casera-bench-1..3) are deleted afterwards.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from casera.progress import wait_for
from casera_localcloud import engine
from casera_localcloud.nodes import Nodes, image, service

NAMES = ("casera-bench-1", "casera-bench-2", "casera-bench-3")


def _key() -> tuple[paramiko.PKey, str]:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem)), public + " casera-bench"


def _ssh_answers(ip: str, pkey: paramiko.PKey) -> bool:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(ip, username="root", pkey=pkey, timeout=3, banner_timeout=3,
                       auth_timeout=3, look_for_keys=False, allow_agent=False)
        _, stdout, _ = client.exec_command("docker info --format '{{.ServerVersion}}'")
        return stdout.channel.recv_exit_status() == 0
    except (OSError, paramiko.SSHException):
        return False
    finally:
        client.close()


def _cold_start() -> None:
    """Remove the cached image and root filesystem so the next up builds from scratch."""
    engine.ensure_engine()
    client = engine.client()
    if Nodes(client).list_nodes():
        sys.exit("--cold refused: nodes exist and use the node image; run casera local down")
    for tag in (image.image_tag(), image.base_tag()):
        try:
            client.images.remove(tag, force=True)
        except Exception:  # noqa: BLE001 - absent already is what we want
            pass
    image.rootfs_tarball().unlink(missing_ok=True)


def _timed_up(label: str) -> float:
    started = time.monotonic()
    lines = service.up()
    seconds = time.monotonic() - started
    print(f"{label}: {seconds:.1f} s")
    for line in lines:
        print(f"    {line}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true",
                        help="remove the cached node image and root filesystem first")
    parser.add_argument("--down-between", action="store_true",
                        help="run down (nodes, bridge, engine if idle) before the second up, "
                             "as a second `casera local up` on a machine would meet it")
    args = parser.parse_args()
    if args.cold:
        _cold_start()
    first = _timed_up("first up" + (" (cold)" if args.cold else " (whatever was cached)"))
    if args.down_between:
        for line in service.down():
            print(f"    down: {line}")
    second = _timed_up("second up" + (" (after down)" if args.down_between else ""))

    nodes = Nodes()
    pkey, public = _key()
    for name in NAMES:
        nodes.delete_node(name)
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(len(NAMES)) as pool:
            ips = list(pool.map(lambda n: nodes.create_node({"name": n}, [public], None), NAMES))
            created = time.monotonic() - started
            list(pool.map(lambda ip: wait_for(f"SSH and docker on {ip}",
                                              lambda: _ssh_answers(ip, pkey), 120,
                                              interval=0.5, show=False), ips))
        answered = time.monotonic() - started
    finally:
        for name in NAMES:
            nodes.delete_node(name)
    print(f"three nodes: created (booted) in {created:.1f} s, all answering SSH with docker "
          f"in {answered:.1f} s")
    print(f"summary: first up {first:.1f} s, second up {second:.1f} s "
          f"({'meets' if second < 30 else 'misses'} the 30 s goal), "
          f"three nodes to SSH {answered:.1f} s")


if __name__ == "__main__":
    main()
