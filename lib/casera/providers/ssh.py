"""SSH to the nodes through ``fabric`` (paramiko underneath), with pinned host keys.

No host key is ever trusted on first use. The runbook makes each server's host key itself and
hands it over in the cloud-init user data (``ssh_keys``), so the public half is known before
the first contact; it is kept in a per-environment known_hosts file beside the params
(``params/<env>.known_hosts``, OpenSSH's format, public keys only) and every connection is
checked against it. A key that differs stops the connection with a message naming the node.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fabric import Connection

from casera.errors import CaseraError
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
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                fields = line.split()
                if fields and not fields[0].startswith("#"):
                    hosts = fields[0].split(",")
                    if name in hosts or ip in {_ip_of(h) for h in hosts}:
                        continue
                if line.startswith("#") and line + "\n" in HEADER:
                    continue
                kept.append(line)
        host = ip if port == 22 else f"[{ip}]:{port}"
        for key in public_keys:
            key_type, b64 = key.split()[:2]
            kept.append(f"{name},{host} {key_type} {b64}")
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


def run(conn: Connection, command: str, timeout: float = 60.0) -> str:
    """Run a command; raises on a non-zero exit. Returns stdout, stripped."""
    result = conn.run(command, hide=True, warn=False, timeout=timeout, in_stream=False)
    return result.stdout.strip()
