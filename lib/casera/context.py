"""The context a runbook passes to every step: params, secrets, and how this run was started.

Created by the first code cell of each runbook from its papermill parameters; plain data, no
global state, so a step is an ordinary function of ``ctx`` that tests can call directly.
"""

from __future__ import annotations

import getpass
import html
import os
from dataclasses import dataclass, field
from typing import Any

from casera.params import Params, load_params
from casera.secrets import SecretStore


@dataclass(frozen=True)
class RunContext:
    env: str
    params: Params
    secrets: SecretStore = field(repr=False)
    dry_run: bool = False
    approve: bool = False
    interactive: bool = True
    run_id: str = "interactive"
    operator: str = "unknown"

    def summary_lines(self) -> list[str]:
        p = self.params
        lines = [
            f"env {self.env}, run {self.run_id}, operator {self.operator}",
            f"mode: {'DRY RUN (nothing will be changed)' if self.dry_run else 'apply changes'}; "
            f"approval: {p.runner.approval}{' + --approve' if self.approve else ''}; "
            f"{'interactive' if self.interactive else 'headless'}",
            f"servers: {p.hetzner.server_count} x {p.hetzner.server_type} in {p.hetzner.location}"
            f" via {p.hetzner.api_endpoint}",
            "overlay encryption: " + ("on (IPsec/ESP)" if p.swarm.overlay_encrypted else
                                      "OFF for this environment (see params swarm.*)"),
            f"service endpoints: {p.swarm.endpoint_mode}, published ports: {p.swarm.publish_mode}",
        ]
        return lines

    def __str__(self) -> str:
        return "\n".join(self.summary_lines())

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return "<pre>" + html.escape(str(self)) + "</pre>"


def start_run(
    env: str,
    dry_run: bool = False,
    approve: bool = False,
    interactive: bool = True,
    run_id: str = "interactive",
    overrides: dict[str, Any] | None = None,
) -> RunContext:
    """Validate params and load secrets for one run; raises ParamsError before any remote call."""
    secrets = SecretStore(env)
    params = load_params(env, overrides=overrides, secrets=secrets)
    operator = os.environ.get("CASERA_OPERATOR") or getpass.getuser()
    return RunContext(env=env, params=params, secrets=secrets, dry_run=dry_run,
                      approve=approve, interactive=interactive, run_id=run_id,
                      operator=operator)
