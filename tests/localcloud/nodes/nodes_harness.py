"""SSH helpers for the nodes' tests (a module of its own: conftest cannot be imported)."""

from __future__ import annotations

import io
import time

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from casera.progress import wait_for


class SshKey:
    """A fresh ed25519 key pair for one test module."""

    def __init__(self) -> None:
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
        self.pem = pem
        self.pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(pem))
        self.public = private.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode() + " casera-test"


def ssh(key: SshKey, ip: str, command: str, port: int = 22, user: str = "root",
        timeout: float = 60) -> tuple[int, str]:
    """Run ``command`` over real SSH; returns (exit status, stdout+stderr)."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(ip, port=port, username=user, pkey=key.pkey, timeout=5,
                       banner_timeout=5, auth_timeout=5, look_for_keys=False,
                       allow_agent=False)
        _, stdout, stderr = client.exec_command(command, timeout=timeout)
        out = stdout.read().decode() + stderr.read().decode()
        return stdout.channel.recv_exit_status(), out
    finally:
        client.close()


def wait_ssh(key: SshKey, ip: str, port: int, user: str, timeout: float = 90) -> float:
    started = time.monotonic()
    wait_for(f"SSH {user}@{ip}:{port}", lambda: ssh(key, ip, "true", port, user)[0] == 0,
             timeout, interval=0.5, show=False)
    return time.monotonic() - started
