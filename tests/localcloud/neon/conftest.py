"""A private local Neon for the test session: its own CASERA_LOCAL_HOME, project dir (so the
real secrets/local.env is untouched) and ports, so it runs beside an operator's local cloud.

Allowlist tests need a client whose address is not loopback: every loopback client comes
from 127.0.0.1, so the session makes a network namespace (``casera_localcloud.neon.netns``).
The local Neon listens on the namespace's host end because the session adds it to
CASERA_NEON_LISTEN_EXTRA before ``up()``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from localcloud_harness import applied, local_neon

from casera_localcloud.neon.netns import Netns
from casera_localcloud.neon.netns import create as make_netns
from casera_localcloud.neon.netns import remove as remove_netns


@dataclass
class NeonEnv:
    home: Path
    project_dir: Path
    base: int
    api_url: str
    api_key: str
    password: str
    ca_file: Path
    netns: Netns
    up_seconds: float
    environ: dict[str, str | None]

    @property
    def pg_port(self) -> int:
        return self.base

    @property
    def pooler_port(self) -> int:
        return self.base + 20

    def api(self, method: str, path: str, body: dict[str, Any] | None = None,
            token: str | None = "default") -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {self.api_key if token == 'default' else token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api_url + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def conninfo(self, port: int, **extra: Any) -> dict[str, Any]:
        info: dict[str, Any] = {"host": "127.0.0.1", "port": port, "user": "casera",
                                "password": self.password, "dbname": "casera",
                                "sslmode": "require"}
        info.update(extra)
        return info


@pytest.fixture(scope="session")
def neon_session() -> Iterator[NeonEnv]:
    if os.geteuid() != 0:
        pytest.skip("the local Neon runs PostgreSQL as the postgres user: needs root")
    if not shutil.which("nsenter"):
        pytest.skip("nsenter is needed for the allowlist client")
    root = Path(tempfile.mkdtemp(prefix="casera-neon-test-", dir="/tmp"))
    netns = make_netns(f"t{os.getpid()}")
    try:
        # Shift 0 in the port block: the step tests' Neon (steps_harness, shift 50) may run
        # in the same session.
        with local_neon(root, api_offset=50, listen_extra=netns.host_ip) as neon:
            print("\n".join(neon.up_lines))
            yield NeonEnv(
                home=neon.home, project_dir=neon.project_dir, base=neon.base,
                api_url=neon.api_url, api_key=neon.api_key, password=neon.password,
                ca_file=neon.ca_file, netns=netns, up_seconds=neon.up_seconds,
                environ=neon.environ,
            )
    finally:
        remove_netns(netns)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def neon_env(neon_session: NeonEnv) -> Iterator[NeonEnv]:
    with applied(neon_session.environ):
        yield neon_session
