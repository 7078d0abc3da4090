"""The app's database credential after a rotation: ``secrets/<env>.db-role.env`` (git-ignored,
mode 0600), and which of the two login roles the app uses.

Neon generates a role's password and shows it once, in the answer that makes it (create or
reset_password), so the rotation keeps it here until the Docker-secrets step hands it on, as
the B2 key store does for B2 keys (``casera.b2_keys``). Before the first rotation the file does
not exist and the app's credential is ``neon.role`` (params) with ``CASERA_DB_PASSWORD`` (the
operator's store). The runner's scrub and leak scan read this file too.

The two login roles used alternately are ``neon.role`` and :func:`alternate_role` of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from casera.operator_secrets import Secret, SecretStore
from casera.paths import secrets_file
from casera.secret_file import SecretFile

if TYPE_CHECKING:
    from casera.context import RunContext


@dataclass(frozen=True)
class DbCredential:
    role: str
    password: Secret


def alternate_role(role: str) -> str:
    """The second login role beside ``role`` (same privileges: a member of ``role`` whose
    sessions act as it)."""
    return f"{role}_alt"


class DbRoleStore(SecretFile):
    """``DB_ROLE`` / ``DB_PASSWORD`` (the credential the app uses or is about to), the
    rotation that made it, and the credential it replaced until that one is retired."""

    ROLE, PASSWORD, ROTATION = "DB_ROLE", "DB_PASSWORD", "DB_ROTATION"
    RETIRING_ROLE, RETIRING_PASSWORD = "DB_RETIRING_ROLE", "DB_RETIRING_PASSWORD"
    HEADER = ("# The app's database credential made by casera's rotation (Neon shows a "
              "password once). Never commit it.\n")
    KEEP_EMPTY = False

    def current(self) -> DbCredential | None:
        lines = self._lines()
        if not lines.get(self.ROLE) or not lines.get(self.PASSWORD):
            return None
        return DbCredential(lines[self.ROLE], Secret("db_password", lines[self.PASSWORD]))

    def rotation(self) -> str | None:
        return self._lines().get(self.ROTATION)

    def retiring(self) -> DbCredential | None:
        lines = self._lines()
        if not lines.get(self.RETIRING_ROLE):
            return None
        return DbCredential(lines[self.RETIRING_ROLE],
                            Secret("db_password", lines.get(self.RETIRING_PASSWORD, "")))

    def put(self, new: DbCredential, rotation: str, retiring: DbCredential) -> None:
        """The new credential, the rotation that made it and the one it replaces, in one
        atomic write (a crash never leaves a new password without the old role noted)."""
        self._write({self.ROLE: new.role, self.PASSWORD: new.password.reveal(),
                     self.ROTATION: rotation, self.RETIRING_ROLE: retiring.role,
                     self.RETIRING_PASSWORD: retiring.password.reveal()})

    def retired(self) -> None:
        """The replaced credential is refused now: forget it."""
        lines = self._lines()
        lines.pop(self.RETIRING_ROLE, None)
        lines.pop(self.RETIRING_PASSWORD, None)
        self._write(lines)

    def values(self) -> list[str]:
        """Every stored password, for the runner's scrub and leak scan. Never print this."""
        lines = self._lines()
        return [v for k, v in lines.items() if k in (self.PASSWORD, self.RETIRING_PASSWORD)
                and v]


def role_store_path(env: str) -> Path:
    return secrets_file(env).with_name(f"{env}.db-role.env")


def role_store(env: str) -> DbRoleStore:
    return DbRoleStore(role_store_path(env))


def stored_secret_values(env: str) -> list[str]:
    return role_store(env).values()


def app_credential(ctx: RunContext) -> DbCredential:
    """The credential the app uses (or is rolling onto): the rotation's, else ``neon.role``
    with the operator's ``CASERA_DB_PASSWORD``."""
    return credential_for(ctx.env, ctx.params.neon.role, ctx.secrets)


def credential_for(env: str, role: str, secrets: SecretStore) -> DbCredential:
    """:func:`app_credential` from its parts (scripts and tests that have no RunContext)."""
    return role_store(env).current() or DbCredential(role, secrets.get("db_password"))


def app_role(ctx: RunContext) -> str:
    """The role of :func:`app_credential`, without needing the password."""
    current = role_store(ctx.env).current()
    return current.role if current else ctx.params.neon.role
