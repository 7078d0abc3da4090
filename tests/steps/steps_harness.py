"""What the step tests share: free ports, environment switching, and a RunContext built from
params/local.yaml with overrides and an in-memory SecretStore, so no test reads or writes the
checkout's secrets/local.env.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from localcloud_harness import applied, free_port
from localcloud_harness import local_neon as start_local_neon

from casera.context import RunContext
from casera.operator_secrets import SecretStore
from casera.params import load_params

__all__ = ["applied", "free_port", "local_neon", "make_ctx", "private_b2"]

REPO = Path(__file__).resolve().parents[2]
LOCAL_PARAMS = REPO / "params" / "local.yaml"


def make_ctx(overrides: dict[str, Any], environ: dict[str, str], *, dry_run: bool = False,
             run_id: str = "test") -> RunContext:
    """A run on 'local' pointed at this module's emulators. ``environ`` holds the secrets
    (CASERA_* variables); ``file`` points nowhere so secrets/local.env is never read."""
    secrets = SecretStore("local", environ=environ, file=Path("/nonexistent/local.env"))
    params = load_params("local", overrides=overrides, path=LOCAL_PARAMS, secrets=secrets)
    return RunContext(env="local", params=params, secrets=secrets, dry_run=dry_run,
                      approve=False, interactive=False, run_id=run_id, operator="test")


@contextmanager
def local_neon(root: Path) -> Iterator[dict[str, Any]]:
    """A private local Neon under ``root`` (see localcloud_harness.local_neon), half a port
    block beside the Neon tests' own. Yields what a ctx needs: params overrides, the
    secrets' environment, and the ``environ`` to apply around ``neon.up``."""
    with start_local_neon(root, api_offset=40, shift=50) as neon:
        yield {
            "environ": neon.environ,
            "secrets": {"CASERA_NEON_API_KEY": neon.api_key,
                        "CASERA_DB_PASSWORD": neon.password},
            "overrides": {
                "neon.api_endpoint": neon.api_url,
                "neon.pooler_port": neon.base + 20,
                "neon.direct_port": neon.base,
                "neon.sslrootcert": str(neon.ca_file),
            },
        }


@contextmanager
def private_b2(tmp_path_factory: Any) -> Iterator[dict[str, Any]]:
    """A private B2 emulator (real HTTP, unmodified b2sdk) and a scratch project directory
    for the key store under ``<project>/secrets``. Yields the realm, the project and the
    master key as the secrets' environment."""
    from casera_localcloud.b2 import service

    state_dir = tmp_path_factory.mktemp("b2-state")
    project = tmp_path_factory.mktemp("project")
    port = free_port()
    service.start(port, state_dir, show=False)
    try:
        key_id, key = service.master_credentials(state_dir)
        with applied({"CASERA_PROJECT_DIR": str(project)}):
            yield {"realm": service.endpoint(port), "project": project,
                   "environ": {"CASERA_B2_KEY_ID": key_id, "CASERA_B2_APPLICATION_KEY": key}}
    finally:
        service.stop(state_dir)
