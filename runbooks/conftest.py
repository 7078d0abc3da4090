"""nbval over the runbooks: ``pytest --nbval-lax runbooks/``.

Source runbooks are kept without outputs (executed copies belong in outputs/), and nbval cannot
inject parameters. So, as each notebook is read for nbval, this plugin does what
``papermill --prepare-only`` would (inject ``interactive = False``, so no step waits for a
click) and fills the outputs of the cells marked ``# NBVAL_CHECK_OUTPUT`` from the reference
text kept in their ``metadata.casera.expected_output``. Everything else nbval checks as usual:
every cell runs, and a cell that raises fails the suite.

The runbooks run for real against ``params/local.yaml``, so the session first brings the
local cloud up (``casera local up``, idempotent: seconds when it already runs). Secrets the
environment still lacks are then planted with recognisable fake values so that every runbook
sees every secret present.

``CASERA_NBVAL_NO_LOCAL_CLOUD=1`` skips bringing the local cloud up: for notebooks that need
none (tests/test_runner.py runs nbval with this plugin over scratch notebooks that way).
A red check fails its cell here as under the runner: ``timed`` raises ``ChecksFailed``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import nbformat
import nbval.plugin
import pytest
from papermill.parameterize import parameterize_notebook

from casera.operator_secrets import SECRET_SPECS, SecretStore

PLANTED_PREFIX = "nbval-planted-"


def _plant_missing_secrets() -> None:
    store = SecretStore("local")
    for spec in SECRET_SPECS:
        if not store.has(spec.name):
            os.environ[spec.env_var] = f"{PLANTED_PREFIX}{spec.name}-4f1d2a"


# Runbook parameters that keep a runbook's nbval pass cheap on the bootstrapped cloud:
# rotate-secrets runs for real with the secrets whose store values the bootstrap just
# deployed (0 changes, no roll); new B2 keys and the rolls are the e2e test's
# (tests/e2e/test_secret_rotation.py).
NBVAL_PARAMETERS: dict[str, dict[str, Any]] = {
    "rotate-secrets.ipynb": {"secrets": "secret_key,apns_key"},
}


class _PreparedNbformat:
    """nbformat, except that ``read`` returns the notebook prepared for nbval."""

    def __getattr__(self, name: str) -> Any:
        return getattr(nbformat, name)

    def read(self, path: str, as_version: int) -> nbformat.NotebookNode:
        nb = nbformat.read(path, as_version=as_version)
        for cell in nb.cells:
            cell.metadata.setdefault("tags", [])  # papermill expects these keys
        nb.metadata.setdefault("papermill", {})
        nb = parameterize_notebook(nb, {"interactive": False,
                                        **NBVAL_PARAMETERS.get(os.path.basename(path), {})})
        for cell in nb.cells:
            expected = cell.get("metadata", {}).get("casera", {}).get("expected_output")
            if cell.cell_type == "code" and expected is not None:
                cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=expected)]
                cell.execution_count = 1  # nbval ignores outputs of cells never run
        return nb


NO_LOCAL_CLOUD_ENV = "CASERA_NBVAL_NO_LOCAL_CLOUD"


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get(NO_LOCAL_CLOUD_ENV) != "1":
        subprocess.run([sys.executable, "-m", "casera.runner.cli", "local", "up"], check=True)
    _plant_missing_secrets()


nbval.plugin.nbformat = _PreparedNbformat()


# Runbooks that end the local environment run after every other: nbval runs each runbook for
# real on the one local cloud, and the teardown removes it (the next `make test` starts from
# `casera local down --purge` anyway).
LAST = ("teardown.ipynb",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name in LAST)  # stable: the rest keep their order
