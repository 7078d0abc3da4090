"""SSH to the nodes through ``fabric`` (paramiko underneath), with pinned host keys.

No host key is ever trusted on first use. The runbook makes each server's host key itself and
hands it over in the cloud-init user data (``ssh_keys``), so the public half is known before
the first contact; it is kept in a per-environment known_hosts file beside the params
(``params/<env>.known_hosts``, OpenSSH's format, public keys only) and every connection is
checked against it. A key that differs stops the connection with a message naming the node.

Besides connections and commands, this module owns the probes the access and stack steps make
from outside a node (a TCP connect, a login that must be refused, a password attempt, an HTTP
GET through a tunnel): each returns what it found as plain data, and paramiko's and fabric's
errors become :class:`~casera.errors.ProviderError` (``system="ssh"``). A
:class:`HostKeyError` always passes through as itself: it names the node and must stop the run.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import os
import secrets
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, Protocol, TypeVar

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fabric import Connection
from invoke.exceptions import CommandTimedOut, UnexpectedExit

from casera.errors import CaseraError, ProviderError
from casera.operator_secrets import Secret
from casera.paths import params_file

HEADER = ("# Host keys of this environment's servers (public halves only), written by the\n"
          "# bootstrap runbook when it creates a server and checked on every SSH connection.\n"
          "# OpenSSH reads it too: ssh -o UserKnownHostsFile=<this file> -p PORT user@IP\n")


class HostKeyError(CaseraError):
    """A node's host key is not the pinned one, or none is pinned: nothing was sent to it."""


def fingerprint(key_type: str, blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint (``ssh-keygen -lf``), so operators can compare."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"{key_type} SHA256:{digest}"


@dataclass(frozen=True)
class HostKey:
    """A host key made for one server. ``private`` is a Secret (OpenSSH PEM): it goes into
    that server's user data and nowhere else."""

    public: str  # "ssh-ed25519 AAAA..."
    private: Secret

    @property
    def fingerprint(self) -> str:
        key_type, b64 = self.public.split()[:2]
        return fingerprint(key_type, base64.b64decode(b64))


def new_host_key(name: str) -> HostKey:
    """A fresh ed25519 host key. ed25519 only: every client here speaks it, and cloud-init
    writes exactly the types given (cc_ssh deletes the image's keys and generates none when
    ``ssh_keys`` is set; canonical/cloud-init cloudinit/config/cc_ssh.py)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return HostKey(public=public, private=Secret(f"host key of {name}", private))


@dataclass(frozen=True)
class Pin:
    name: str
    ip: str
    key_type: str
    key_b64: str


def _ip_of(host: str) -> str:
    """``[1.2.3.4]:2222`` or ``1.2.3.4`` -> ``1.2.3.4``."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host


class KnownHosts:
    """One environment's pinned host keys, in OpenSSH known_hosts format.

    Each line names the server and its address: ``casera-1,[1.2.3.4]:2222 ssh-ed25519 AAAA``.
    Lookups go by address (what a connection knows) and ignore the port, so moving
    ``ssh.port`` does not orphan the pins.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_env(cls, env: str) -> KnownHosts:
        """``params/<env>.known_hosts`` beside ``params/<env>.yaml``."""
        return cls(params_file(env).with_suffix(".known_hosts"))

    def __repr__(self) -> str:
        return f"KnownHosts({self.path})"

    def pins(self) -> list[Pin]:
        if not self.path.exists():
            return []
        pins = []
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) < 3 or fields[0].startswith(("|", "@")):
                raise HostKeyError(f"{self.path}:{number}: not a plain known_hosts line "
                                   "(hosts key-type base64); hashed names and markers are not "
                                   "used here. Fix: write it as the runbook does, or delete it")
            hosts = fields[0].split(",")
            names = [h for h in hosts if not _looks_like_address(h)]
            for host in hosts:
                if _looks_like_address(host):
                    pins.append(Pin(names[0] if names else "?", _ip_of(host), fields[1],
                                    fields[2]))
        return pins

    def for_address(self, ip: str) -> list[Pin]:
        return [p for p in self.pins() if p.ip == ip]

    def names(self) -> dict[str, str]:
        """name -> address of every pinned server."""
        return {p.name: p.ip for p in self.pins()}

    def pin(self, name: str, ip: str, port: int, public_keys: list[str]) -> None:
        """Trust ``public_keys`` for server ``name`` at ``ip``, replacing what was pinned for
        that name or that address (a re-created server, or an address Hetzner handed on).
        Only for servers the runbook has just created with these keys."""
        host = ip if port == 22 else f"[{ip}]:{port}"
        added = []
        for key in public_keys:
            key_type, b64 = key.split()[:2]
            added.append(f"{name},{host} {key_type} {b64}")
        self._rewrite(lambda hosts: name in hosts or ip in {_ip_of(h) for h in hosts}, added)

    def unpin(self, name: str) -> bool:
        """Forget server ``name`` (deleted: its address may go to someone else's server,
        whose key must not be trusted for it). False when nothing was pinned for it."""
        if name not in self.names():
            return False
        self._rewrite(lambda hosts: name in hosts, [])
        return True

    def _rewrite(self, drop: Callable[[list[str]], bool], added: list[str]) -> None:
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                fields = line.split()
                if fields and not fields[0].startswith("#") and drop(fields[0].split(",")):
                    continue
                if line.startswith("#") and line + "\n" in HEADER:
                    continue
                kept.append(line)
        kept += added
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: a run killed mid-write must not leave half a file that refuses every node.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as out:
            out.write(HEADER + "".join(line + "\n" for line in kept))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)

    def verify(self, ip: str, port: int, key: paramiko.PKey, node: str | None = None) -> str:
        """The pinned node's name when ``key`` is pinned for ``ip``; raises otherwise."""
        pins = self.for_address(ip)
        offered = fingerprint(key.get_name(), key.asbytes())
        if not pins:
            who = f"{node} ({ip}:{port})" if node else f"{ip}:{port}"
            raise HostKeyError(
                f"host key of {who} is not pinned in {self.path} (offered: {offered}); "
                "nothing was sent to it. The runbook pins the key of every server it creates. "
                "Fix: if the server was made before keys were pinned or outside the runbook, "
                "read its key on the Hetzner console (ssh-keygen -lf "
                "/etc/ssh/ssh_host_ed25519_key.pub), compare, and add the line "
                f"'NAME,[{ip}]:{port} TYPE BASE64' to {self.path.name}; or delete the server "
                "and run the bootstrap again, which re-creates it with a pinned key")
        name = pins[0].name
        for pin in pins:
            if pin.key_type == key.get_name() and pin.key_b64 == key.get_base64():
                return pin.name
        pinned = ", ".join(fingerprint(p.key_type, base64.b64decode(p.key_b64)) for p in pins)
        raise HostKeyError(
            f"HOST KEY CHANGED for node {node or name} ({ip}:{port}): it offers {offered}, "
            f"{self.path} pins {pinned}. Either the connection is intercepted, or the server "
            "was rebuilt outside the runbook; nothing was sent to it and the run stops here. "
            f"Fix: compare on the Hetzner console of {node or name} (ssh-keygen -lf "
            "/etc/ssh/ssh_host_ed25519_key.pub). If the server really was rebuilt, delete it "
            "so the bootstrap re-creates it with a new pinned key, or replace its line in "
            f"{self.path.name} with the key you verified")

    def policy(self, ip: str, port: int, node: str | None = None) -> PinnedHostKeyPolicy:
        return PinnedHostKeyPolicy(self, ip, port, node)


def _looks_like_address(host: str) -> bool:
    return host.startswith("[") or host.replace(".", "").isdigit() or ":" in host


class PinnedHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Checks the server's key against the pins. The client it is set on must hold no host
    keys of its own, so paramiko asks this policy on every connection."""

    def __init__(self, known: KnownHosts, ip: str, port: int, node: str | None) -> None:
        self.known, self.ip, self.port, self.node = known, ip, port, node

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        self.known.verify(self.ip, self.port, key, self.node)


def pinned_client(known: KnownHosts, ip: str, port: int,
                  node: str | None = None) -> paramiko.SSHClient:
    """A bare paramiko client that checks host keys against ``known`` only (neither
    ~/.ssh/known_hosts nor anything else)."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(known.policy(ip, port, node))
    return client


def check_transport(known: KnownHosts, transport: paramiko.Transport, ip: str, port: int,
                    node: str | None = None) -> str:
    """For raw transports (no SSHClient): verify the key the server showed in key exchange."""
    return known.verify(ip, port, transport.get_remote_server_key(), node)


def connect(host: str, port: int, user: str, key_file: str, timeout: float = 10.0, *,
            known_hosts: KnownHosts, node: str | None = None) -> Connection:
    """A connection that uses only the given key (no agent, no ~/.ssh guessing, no password)
    and accepts only the host key pinned for ``host`` in ``known_hosts``."""
    conn = Connection(
        host=host, port=port, user=user,
        connect_timeout=timeout,
        connect_kwargs={"key_filename": [os.path.expanduser(key_file)], "allow_agent": False,
                        "look_for_keys": False, "banner_timeout": timeout,
                        "auth_timeout": timeout},
    )
    # fabric sets AutoAddPolicy on its client and loads no known_hosts: replace the policy.
    conn.client.set_missing_host_key_policy(known_hosts.policy(host, port, node))
    return conn


# What paramiko and the socket layer raise when a connection or a channel fails.
SSH_ERRORS = (paramiko.SSHException, OSError, EOFError)


def _failed(where: str, exc: BaseException) -> ProviderError:
    return ProviderError("ssh", f"{where}: {type(exc).__name__}: {exc}"[:400])


def run(conn: Connection, command: str, timeout: float = 60.0) -> str:
    """Run a command; returns stdout, stripped. A non-zero exit, a timeout or a failed
    connection raises :class:`ProviderError` naming the node and the command."""
    where = f"{conn.user}@{conn.host}:{conn.port}"
    try:
        result = conn.run(command, hide=True, warn=False, timeout=timeout, in_stream=False)
    except UnexpectedExit as exc:
        output = (exc.result.stderr or exc.result.stdout).strip()[-300:]
        raise ProviderError("ssh", f"{where}: `{command}` exited {exc.result.exited}: {output}",
                            code=str(exc.result.exited)) from None
    except CommandTimedOut:
        raise ProviderError("ssh", f"{where}: `{command}` did not finish within "
                            f"{timeout:.0f} s") from None
    except SSH_ERRORS as exc:
        raise _failed(where, exc) from exc
    return result.stdout.strip()


def put_text(conn: Connection, text: str, remote_path: str) -> None:
    """Write ``text`` to ``remote_path`` (relative: the login user's home) over SFTP."""
    try:
        conn.put(io.StringIO(text), remote_path)
    except SSH_ERRORS as exc:
        raise _failed(f"{conn.host}:{conn.port}: writing {remote_path}", exc) from exc


class _Closable(Protocol):
    def close(self) -> None: ...


Conn = TypeVar("Conn", bound=_Closable)


class ConnectionPool(Generic[Conn]):
    """What one run keeps open per node, keyed by address, user, key and pins, so its steps
    do not log in again for every call. An entry is made (and its host key checked against
    the pins) on first use, and made again when its SSH transport no longer carries a
    session (a restarted node). Subclasses say how to open one and how to tell it is alive."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, int, str, str, str], Conn] = {}
        self._lock = threading.Lock()

    def _connect(self, host: str, port: int, user: str, key_file: str, timeout: float,
                 known_hosts: KnownHosts, node: str | None) -> Conn:
        raise NotImplementedError

    def _alive(self, conn: Conn, timeout: float) -> bool:
        raise NotImplementedError

    def get(self, host: str, port: int, user: str, key_file: str, timeout: float = 10.0, *,
            known_hosts: KnownHosts, node: str | None = None) -> Conn:
        key = (host, port, user, key_file, str(known_hosts.path))
        with self._lock:
            conn = self._open.pop(key, None)
        if conn is not None and self._alive(conn, timeout):
            with self._lock:
                self._open[key] = conn
            return conn
        if conn is not None:
            conn.close()
        conn = self._connect(host, port, user, key_file, timeout, known_hosts, node)
        with self._lock:
            self._open[key] = conn
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._open = list(self._open.values()), {}
        for conn in conns:
            conn.close()


class Pool(ConnectionPool[Connection]):
    """The run's SSH connections (fabric), opened at once so a bad host key fails here."""

    def _connect(self, host: str, port: int, user: str, key_file: str, timeout: float,
                 known_hosts: KnownHosts, node: str | None) -> Connection:
        conn = connect(host, port, user, key_file, timeout, known_hosts=known_hosts, node=node)
        try:
            conn.open()
        except HostKeyError:
            conn.close()
            raise
        except SSH_ERRORS as exc:
            conn.close()
            raise _failed(f"{user}@{host}:{port}", exc) from exc
        return conn

    def _alive(self, conn: Connection, timeout: float) -> bool:
        return _alive(conn, timeout)


def _alive(conn: Connection, timeout: float) -> bool:
    return transport_alive(conn.client.get_transport() if conn.is_connected else None, timeout)


def transport_alive(transport: paramiko.Transport | None, timeout: float) -> bool:
    """The transport still carries a session: one round trip (a channel opened and closed).
    A transport can look active long after its node was restarted; only traffic tells, and
    a node that stopped answering costs ``timeout``, not the TCP stack's minutes."""
    if transport is None or not transport.is_active():
        return False
    try:
        transport.open_session(timeout=timeout).close()
    except SSH_ERRORS:
        return False
    return True


def probe_port(ip: str, port: int, timeout: float) -> tuple[bool, str]:
    """(answers, what happened) for a TCP connect from here. Answering with anything counts
    as open; "refused" (nothing listens) and "no answer" (a firewall drops it, as Hetzner's
    does) both count as closed, and the detail says which."""
    try:
        with socket.create_connection((ip, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            try:
                banner = sock.recv(64).decode(errors="replace").strip()
            except OSError:
                banner = ""
            return True, f"OPEN{': ' + banner if banner else ''}"
    except ConnectionRefusedError:
        return False, "refused"
    except TimeoutError:
        return False, f"no answer in {timeout:.0f} s (filtered)"
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return False, f"unreachable ({exc.strerror})"
        raise ProviderError("ssh", f"TCP probe of {ip}:{port}: {type(exc).__name__}: {exc}"
                            ) from exc


def key_login(known: KnownHosts, ip: str, port: int, user: str, key_file: str,
              timeout: float, node: str | None = None) -> tuple[Literal["refused", "accepted",
                                                                         "error"], str]:
    """Try to log in as ``user`` with ``key_file`` on a fresh connection (the host key checked
    against the pins) and close it at once: ("refused", ...) when sshd turns the key down,
    ("accepted", ...) when it lets the login in, ("error", what) when it did neither."""
    client = pinned_client(known, ip, port, node)
    try:
        client.connect(ip, port=port, username=user, key_filename=os.path.expanduser(key_file),
                       allow_agent=False, look_for_keys=False, timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout)
    except paramiko.AuthenticationException:
        return "refused", f"{user} with the key: authentication refused"
    except SSH_ERRORS as exc:
        return "error", f"unexpected {type(exc).__name__}: {exc}"
    finally:
        client.close()
    return "accepted", f"{user} with the key: login ACCEPTED"


@dataclass(frozen=True)
class PasswordAttempt:
    """What sshd answered to one password login with a random password: ``refused_by_method``
    (passwords are not an allowed method at all; ``offered`` lists what is), ``wrong_password``
    (sshd would take the right one) or ``accepted``."""

    outcome: Literal["refused_by_method", "wrong_password", "accepted"]
    offered: tuple[str, ...] = ()


def password_attempt(known: KnownHosts, ip: str, port: int, user: str, timeout: float,
                     node: str | None = None) -> PasswordAttempt:
    """Try a real password login as ``user`` with a random password, over a fresh transport
    whose host key is checked against the pins first."""
    try:
        sock = socket.create_connection((ip, port), timeout=timeout)
    except OSError as exc:
        raise _failed(f"{ip}:{port}", exc) from exc
    with sock:
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=timeout)
            check_transport(known, transport, ip, port, node)
            try:
                transport.auth_password(user, secrets.token_urlsafe(18))
            except paramiko.BadAuthenticationType as exc:
                return PasswordAttempt("refused_by_method", tuple(exc.allowed_types))
            except paramiko.AuthenticationException:
                return PasswordAttempt("wrong_password")
            return PasswordAttempt("accepted")
        except SSH_ERRORS as exc:
            raise _failed(f"password attempt as {user} on {ip}:{port}", exc) from exc
        finally:
            transport.close()


def http_through_tunnel(conn: Connection, port: int, path: str,
                        timeout: float = 10.0) -> tuple[int, str]:
    """GET ``path`` from the node's own 127.0.0.1:``port`` over the SSH connection's
    direct-tcpip channel: exactly what ``ssh -L`` does for an operator. Returns the status
    and the first line of the body."""
    where = f"{conn.host}:{conn.port} -> 127.0.0.1:{port}{path}"
    try:
        conn.open()
        transport = conn.client.get_transport()
        if transport is None:
            raise ProviderError("ssh", f"{where}: the SSH connection has no transport")
        channel = transport.open_channel("direct-tcpip", ("127.0.0.1", port),
                                         ("127.0.0.1", 0), timeout=timeout)
        try:
            channel.settimeout(timeout)
            channel.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            raw = b""
            while len(raw) < 65536:
                chunk = channel.recv(4096)
                if not chunk:
                    break
                raw += chunk
        finally:
            channel.close()
    except SSH_ERRORS as exc:
        raise _failed(where, exc) from exc
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProviderError("ssh", f"{where}: not an HTTP answer: {status_line[:80]!r}")
    first_line = next(iter(body.decode(errors="replace").strip().splitlines()), "")
    return int(parts[1]), first_line[:80]
