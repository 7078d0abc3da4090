"""A local TCP port forwarded through an SSH connection to an address the node reaches:
what ``ssh -L 127.0.0.1:PORT:HOST:HOSTPORT`` does, for clients (redis-py) that want a socket.

The listener is on this machine's loopback only, lives as long as the ``with`` block, and
each accepted connection gets its own ``direct-tcpip`` channel over the one SSH transport.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import paramiko
from fabric import Connection

from casera.errors import ProviderError

SSH_ERRORS = (paramiko.SSHException, OSError, EOFError)


def _pump(local: socket.socket, channel: paramiko.Channel) -> None:
    try:
        while True:
            ready, _, _ = select.select([local, channel], [], [], 1.0)
            if local in ready:
                data = local.recv(65536)
                if not data:
                    break
                channel.sendall(data)
            if channel in ready:
                data = channel.recv(65536)
                if not data:
                    break
                local.sendall(data)
    except SSH_ERRORS:
        pass
    finally:
        channel.close()
        local.close()


@contextmanager
def forward(conn: Connection, host: str, port: int) -> Iterator[tuple[str, int]]:
    """Yield ("127.0.0.1", local port) forwarded to ``host:port`` as seen from the node."""
    where = f"{conn.host}:{conn.port} -> {host}:{port}"
    try:
        conn.open()
        transport = conn.client.get_transport()
    except SSH_ERRORS as exc:
        raise ProviderError("ssh", f"{where}: {type(exc).__name__}: {exc}"[:400]) from exc
    if transport is None:
        raise ProviderError("ssh", f"{where}: the SSH connection has no transport")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                local, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                channel = transport.open_channel("direct-tcpip", (host, port), peer,
                                                 timeout=10)
            except SSH_ERRORS:
                local.close()  # the client sees the connection refused
                continue
            threading.Thread(target=_pump, args=(local, channel), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True, name=f"ssh-forward {where}")
    thread.start()
    try:
        yield "127.0.0.1", int(listener.getsockname()[1])
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=2)
