"""Writes the local cloud's generated credentials into ``secrets/local.env``.

The runbooks read secrets only through ``casera.operator_secrets``; the local cloud is just another
source of them, so it writes the same git-ignored file an operator would.
"""

from __future__ import annotations

import os

from casera.paths import secrets_file


def read_local_secrets() -> dict[str, str]:
    path = secrets_file("local")
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip()
    return values


def write_local_secret(name: str, value: str) -> bool:
    """Set ``name=value`` in secrets/local.env (mode 0600). Returns True when it changed."""
    values = read_local_secrets()
    if values.get(name) == value:
        return False
    values[name] = value
    path = secrets_file("local")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{k}={v}\n" for k, v in sorted(values.items())))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return True
