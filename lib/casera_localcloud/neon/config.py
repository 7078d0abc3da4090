"""Where the local Neon keeps its files and which ports it uses.

Ports and extra listen addresses come from the environment so a test session can run a
second local Neon beside the one an operator has up, without the two fighting over ports.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from casera.paths import local_cloud_home

# Absolute paths: a notebook kernel's PATH often lacks /usr/sbin.
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PGBOUNCER = Path("/usr/sbin/pgbouncer")
RUNUSER = Path("/usr/sbin/runuser")
PROJECT_ID = "casera-local"
DATABASE = "casera"
ROLE = "casera"
MAIN_BRANCH_ID = "br-casera-local-main"
MAIN_ENDPOINT_ID = "ep-casera-local"
# Hostnames are not in any DNS: clients pass hostaddr (or the IP) and keep the name for
# verify-full, the same way Neon's names resolve to a proxy that presents a matching cert.
DOMAIN = "local.neon"
BRIDGE_GATEWAY = "10.77.0.1"
PLANS = ("launch", "scale")
# history_retention_seconds limits per plan (Neon plan table, 2026): Launch 1 day by
# default and 7 days at most, Scale 30 days.
RETENTION_DEFAULT = {"launch": 86400, "scale": 86400}
RETENTION_MAX = {"launch": 604800, "scale": 2592000}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def host_has_address(address: str) -> bool:
    # Binding succeeds only for an address of this host; needs no iproute2.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
            return True
        except OSError:
            return False


@dataclass(frozen=True)
class NeonConfig:
    home: Path
    pg_port: int
    pooler_port: int
    api_port: int
    branch_port_base: int
    extra_listen: tuple[str, ...] = field(default=())
    client_hostaddr: str = "127.0.0.1"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api/v2"

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.crt"

    @property
    def wal_dir(self) -> Path:
        return self.home / "wal"

    @property
    def backups_dir(self) -> Path:
        return self.home / "basebackups"

    @property
    def state_file(self) -> Path:
        return self.home / "state.json"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    def listen_addresses(self) -> list[str]:
        """Loopback always; the node bridge gateway only once the nodes part made it (a
        listen address that does not exist makes PostgreSQL refuse to start on it)."""
        wanted = ["127.0.0.1"]
        if host_has_address(BRIDGE_GATEWAY):
            wanted.append(BRIDGE_GATEWAY)
        for address in self.extra_listen:
            if address not in wanted and host_has_address(address):
                wanted.append(address)
        return wanted


def load_config() -> NeonConfig:
    extra = os.environ.get("CASERA_NEON_LISTEN_EXTRA", "")
    return NeonConfig(
        home=local_cloud_home() / "neon",
        pg_port=_env_int("CASERA_NEON_PG_PORT", 15432),
        pooler_port=_env_int("CASERA_NEON_POOLER_PORT", 16432),
        api_port=_env_int("CASERA_NEON_API_PORT", 18002),
        branch_port_base=_env_int("CASERA_NEON_BRANCH_PORT_BASE", 15433),
        extra_listen=tuple(a.strip() for a in extra.split(",") if a.strip()),
        client_hostaddr=os.environ.get("CASERA_NEON_CLIENT_HOSTADDR", "127.0.0.1"),
    )
