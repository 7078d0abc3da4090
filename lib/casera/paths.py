"""Where the project's files live. One place, so tests can point it elsewhere."""

from __future__ import annotations

import os
from pathlib import Path


def project_dir() -> Path:
    """The checkout holding params/, runbooks/, outputs/ and secrets/.

    ``CASERA_PROJECT_DIR`` wins (tests use a scratch copy); otherwise the checkout this
    package was installed from in editable mode.
    """
    override = os.environ.get("CASERA_PROJECT_DIR")
    if override:
        return Path(override).resolve()
    return Path(__file__).resolve().parents[2]


def params_file(env: str) -> Path:
    return project_dir() / "params" / f"{env}.yaml"


def secrets_file(env: str) -> Path:
    return project_dir() / "secrets" / f"{env}.env"


def runbook_file(name: str) -> Path:
    return project_dir() / "runbooks" / f"{name}.ipynb"


def outputs_dir(env: str | None = None) -> Path:
    base = project_dir() / "outputs"
    return base / env if env else base


def local_cloud_home() -> Path:
    """State of the local cloud (engine data, images, emulator state) that outlives a checkout,
    so a second ``casera local up`` on the same machine is fast."""
    return Path(os.environ.get("CASERA_LOCAL_HOME", "/var/lib/casera-local"))
