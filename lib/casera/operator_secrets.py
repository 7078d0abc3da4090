"""Secrets: read from the environment or a git-ignored ``secrets/<env>.env``, never from params.

A value is wrapped in :class:`Secret`, whose ``repr``/``str``/format all print a mask, so
printing a context, a result or an exception cannot show it. Code that must hand the value to
a client calls ``reveal()``; grep for it to audit every place a secret leaves the wrapper.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from casera.errors import SecretMissingError
from casera.paths import secrets_file

MASK = "********"


class Secret:
    """A secret value that refuses to print itself."""

    __slots__ = ("_value", "name")

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.name}={MASK})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __reduce__(self) -> object:
        # Pickling would carry the value into kernels' caches and multiprocessing payloads.
        raise TypeError("Secret values are not picklable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((self.name, self._value))


@dataclass(frozen=True)
class SecretSpec:
    name: str
    env_var: str
    purpose: str


# Every secret the runbooks know, in one table: the runner scrubs all of them from outputs.
SECRET_SPECS: tuple[SecretSpec, ...] = (
    SecretSpec("hcloud_token", "CASERA_HCLOUD_TOKEN", "Hetzner Cloud API token of the project"),
    SecretSpec("neon_api_key", "CASERA_NEON_API_KEY", "Neon API key"),
    SecretSpec("db_password", "CASERA_DB_PASSWORD", "password of the app's Postgres role"),
    SecretSpec("secret_key", "CASERA_SECRET_KEY", "the app's SECRET_KEY"),
    SecretSpec("b2_key_id", "CASERA_B2_KEY_ID", "B2 master key id (only to make scoped keys)"),
    SecretSpec("b2_application_key", "CASERA_B2_APPLICATION_KEY", "B2 master application key"),
    SecretSpec("apns_key", "CASERA_APNS_KEY", "APNs push key"),
    SecretSpec("cloudflare_api_token", "CASERA_CLOUDFLARE_API_TOKEN", "Cloudflare API token"),
)
SPECS_BY_NAME = {spec.name: spec for spec in SECRET_SPECS}


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if "=" not in stripped:
            # Say which line, never what it holds: the line may be a secret.
            raise SecretMissingError(
                f"{path}:{number}: not KEY=VALUE; fix that line (its content is not shown)"
            )
        key, _, value = stripped.partition("=")
        values[key.strip()] = value.strip().strip('"').strip("'")
    return values


class SecretStore:
    """The secrets of one environment: environment variables win over ``secrets/<env>.env``."""

    def __init__(self, env: str, environ: dict[str, str] | None = None,
                 file: Path | None = None) -> None:
        self.env = env
        self.file = file or secrets_file(env)
        environ = dict(os.environ if environ is None else environ)
        from_file = _read_env_file(self.file)
        self._values: dict[str, Secret] = {}
        self._sources: dict[str, str] = {}
        for spec in SECRET_SPECS:
            if environ.get(spec.env_var):
                self._values[spec.name] = Secret(spec.name, environ[spec.env_var])
                self._sources[spec.name] = f"environment ${spec.env_var}"
            elif from_file.get(spec.env_var):
                self._values[spec.name] = Secret(spec.name, from_file[spec.env_var])
                self._sources[spec.name] = f"file {self.file.name}"

    def get(self, name: str) -> Secret:
        if name not in SPECS_BY_NAME:
            raise KeyError(f"unknown secret {name!r}; known: {', '.join(SPECS_BY_NAME)}")
        if name not in self._values:
            spec = SPECS_BY_NAME[name]
            raise SecretMissingError(
                f"secret {name} ({spec.purpose}) is not set for env {self.env}: "
                f"export {spec.env_var}=... or add {spec.env_var}=... to {self.file}"
            )
        return self._values[name]

    def has(self, name: str) -> bool:
        return name in self._values

    def source(self, name: str) -> str | None:
        return self._sources.get(name)

    def values(self) -> list[str]:
        """Every known secret value, for scrubbing and leak scans. Never print this."""
        return [secret.reveal() for secret in self._values.values()]

    def __repr__(self) -> str:
        return f"SecretStore(env={self.env}, present={sorted(self._values)})"
