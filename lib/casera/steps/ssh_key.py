"""The operator's SSH key in the Hetzner project (Hetzner puts it in each new server's
authorized_keys). Read by name, never by a remembered id, so a replayed create or a
half-finished earlier run converges instead of duplicating."""

from __future__ import annotations

from pathlib import Path

from casera.context import RunContext
from casera.errors import StepFailed
from casera.params import Params
from casera.plan import Plan, apply
from casera.providers import hetzner
from casera.result import StepResult, timed


def operator_public_key(params: Params) -> str:
    path = Path(params.hetzner.ssh_public_key_file).expanduser()
    if not path.exists():
        raise StepFailed(f"hetzner.ssh_public_key_file: {path} does not exist; create the "
                         f"operator key (ssh-keygen -t ed25519 -f {str(path)[:-4]}) or fix "
                         f"the path in params/{params.env}.yaml")
    return path.read_text().strip()


def _same_key(a: str, b: str) -> bool:
    # Type and base64 blob; the comment may differ.
    return a.split()[:2] == b.split()[:2]


def ensure_ssh_key(ctx: RunContext) -> StepResult:
    """The operator's public key in the Hetzner project, under ``hetzner.ssh_key_name``."""
    p = ctx.params.hetzner
    with timed(StepResult("ssh key", p.ssh_key_name, dry_run=ctx.dry_run)) as result:
        public_key = operator_public_key(ctx.params)
        hz = hetzner.for_env(ctx.params, ctx.secrets)
        found = hz.ssh_keys.get(p.ssh_key_name)
        if found is not None:
            same = _same_key(found.public_key, public_key)
            result.reason = "exists with this key" if same else "exists with ANOTHER key"
            result.check("key matches the operator's", same,
                         found.fingerprint if same else
                         f"project key {found.fingerprint} differs from {p.ssh_public_key_file}; "
                         "rename or delete the old key in the Hetzner console")
            return result
        plan = Plan()
        plan.add(f"+ ssh key {p.ssh_key_name}", lambda: hz.ssh_keys.create_or_get(
            p.ssh_key_name, public_key, dict(p.labels)))
        if apply(ctx, result, plan).dry_run:
            return result
        made = hz.ssh_keys.get(p.ssh_key_name)
        result.check("key present", made is not None and _same_key(made.public_key, public_key),
                     made.fingerprint if made else "not in the project after the create")
    return result
