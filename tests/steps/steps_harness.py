"""What the step tests share: free ports, environment switching, and a RunContext built from
params/local.yaml with overrides and an in-memory SecretStore, so no test reads or writes the
checkout's secrets/local.env.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from casera.context import RunContext
from casera.operator_secrets import SecretStore
from casera.params import load_params

REPO = Path(__file__).resolve().parents[2]
LOCAL_PARAMS = REPO / "params" / "local.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_ctx(overrides: dict[str, Any], environ: dict[str, str], *, dry_run: bool = False,
             run_id: str = "test") -> RunContext:
    """A run on 'local' pointed at this module's emulators. ``environ`` holds the secrets
    (CASERA_* variables); ``file`` points nowhere so secrets/local.env is never read."""
    secrets = SecretStore("local", environ=environ, file=Path("/nonexistent/local.env"))
    params = load_params("local", overrides=overrides, path=LOCAL_PARAMS, secrets=secrets)
    return RunContext(env="local", params=params, secrets=secrets, dry_run=dry_run,
                      approve=False, interactive=False, run_id=run_id, operator="test")


@contextmanager
def applied(environ: dict[str, str | None]) -> Iterator[None]:
    """Set (None: unset) environment variables for a while, then put them back."""
    saved = {name: os.environ.get(name) for name in environ}
    for name, value in environ.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _free_range(offsets: tuple[int, ...]) -> int:
    start = 20000 + (os.getpid() % 150) * 100 + 50  # beside the Neon tests' own ranges
    for base in range(start, 40000, 100):
        if all(_port_free(base + off) for off in offsets):
            return base
    raise RuntimeError("no free port range for the local Neon")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@contextmanager
def local_neon(root: Path) -> Iterator[dict[str, Any]]:
    """A private local Neon (real PostgreSQL + PgBouncer + the API) under ``root``, on free
    ports, with its own CASERA_LOCAL_HOME and project dir. Yields what a ctx needs: params
    overrides, the secrets' environment, and the ``environ`` to apply around ``neon.up``."""
    from casera_localcloud import neon
    from casera_localcloud.local_credentials import read_local_secrets

    os.chmod(root, 0o755)  # PostgreSQL runs as postgres and must walk down to its data
    base = _free_range((0, 1, 2, 3, 20, 21, 22, 23, 40))
    environ: dict[str, str | None] = {
        "CASERA_LOCAL_HOME": str(root / "home"),
        "CASERA_PROJECT_DIR": str(root / "project"),
        "CASERA_NEON_PG_PORT": str(base),
        "CASERA_NEON_BRANCH_PORT_BASE": str(base + 1),
        "CASERA_NEON_POOLER_PORT": str(base + 20),
        "CASERA_NEON_API_PORT": str(base + 40),
        "CASERA_NEON_LISTEN_EXTRA": None,
        "CASERA_NEON_PLAN": None,
        "CASERA_DB_PASSWORD": None,
        "CASERA_NEON_API_KEY": None,
    }
    try:
        with applied(environ):
            neon.up()
            secrets = read_local_secrets()
        yield {
            "environ": environ,
            "secrets": {"CASERA_NEON_API_KEY": secrets["CASERA_NEON_API_KEY"],
                        "CASERA_DB_PASSWORD": secrets["CASERA_DB_PASSWORD"]},
            "overrides": {
                "neon.api_endpoint": f"http://127.0.0.1:{base + 40}/api/v2",
                "neon.pooler_port": base + 20,
                "neon.direct_port": base,
                "neon.sslrootcert": str(root / "home" / "neon" / "tls" / "ca.crt"),
            },
        }
    finally:
        with applied(environ):
            neon.down(purge=True)
