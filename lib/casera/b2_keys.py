"""The operator's store of B2 application keys: ``secrets/<env>.b2-keys.env`` (git-ignored,
mode 0600).

B2 shows an application key's secret once, in the answer that creates it, so the keys the
storage step makes (``casera.steps.storage.ensure_app_keys``) keep their secrets here until
the Docker-secrets step hands them on. The runner's scrub and leak scan read it too: these
secrets are made during a run, after the runner read ``secrets/<env>.env``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from casera.operator_secrets import Secret
from casera.paths import secrets_file
from casera.secret_file import SecretFile


class B2KeyStore(SecretFile):
    """``<name>_KEY_ID=...`` / ``<name>_APPLICATION_KEY=...`` lines in a 0600 file.

    The same KEY=VALUE form as ``secrets/<env>.env`` so an operator can read and repair it
    with an editor; written atomically so a crash never leaves half a key.
    """

    ID_SUFFIX = "_KEY_ID"
    SECRET_SUFFIX = "_APPLICATION_KEY"
    # Ids of replaced keys not deleted yet: comma-separated, never secrets (B2 lists ids).
    RETIRING_SUFFIX = "_RETIRING"
    # The rotation (runbooks/rotate-secrets.ipynb's id) that made the current key: a re-run of
    # that rotation finds it done. Not a secret.
    ROTATION_SUFFIX = "_ROTATION"

    HEADER = ("# B2 application keys made by casera; B2 shows a secret only once, so losing "
              "this file means replacing the keys. Never commit it.\n")

    def load(self) -> dict[str, tuple[str, Secret]]:
        """key name -> (key id, secret) for every complete entry."""
        lines = self._lines()
        found = {}
        for key, key_id in lines.items():
            if key.endswith(self.ID_SUFFIX):
                name = key.removesuffix(self.ID_SUFFIX)
                secret = lines.get(name + self.SECRET_SUFFIX)
                if secret:
                    found[name] = (key_id, Secret(f"b2 key {name}", secret))
        return found

    def put(self, name: str, key_id: str, secret: Secret,
            retiring: Iterable[str] | None = None, rotation: str | None = None) -> None:
        """Store a key; ``retiring`` (when given) replaces the ids recorded as replaced, in
        the same atomic write, so a crash never leaves a new key without its old one noted.
        ``rotation`` names the rotation that made it (dropped when a key is stored without)."""
        lines = self._lines()
        lines[name + self.ID_SUFFIX] = key_id
        lines[name + self.SECRET_SUFFIX] = secret.reveal()
        lines.pop(name + self.ROTATION_SUFFIX, None)
        if rotation:
            lines[name + self.ROTATION_SUFFIX] = rotation
        if retiring is not None:
            self._set_retiring(lines, name, retiring)
        self._write(lines)

    def rotation(self, name: str) -> str | None:
        """The rotation that made key ``name``'s current entry, if a rotation made it."""
        return self._lines().get(name + self.ROTATION_SUFFIX)

    def retiring(self) -> dict[str, list[str]]:
        """key name -> ids of its replaced keys that are not deleted yet."""
        return {key.removesuffix(self.RETIRING_SUFFIX): [i for i in value.split(",") if i]
                for key, value in self._lines().items() if key.endswith(self.RETIRING_SUFFIX)}

    def set_retiring(self, name: str, key_ids: Iterable[str]) -> None:
        lines = self._lines()
        self._set_retiring(lines, name, key_ids)
        self._write(lines)

    def _set_retiring(self, lines: dict[str, str], name: str, key_ids: Iterable[str]) -> None:
        ids = sorted(set(key_ids))
        if ids:
            lines[name + self.RETIRING_SUFFIX] = ",".join(ids)
        else:
            lines.pop(name + self.RETIRING_SUFFIX, None)

    def forget(self, name: str) -> None:
        """Drop a key's entry (its id, secret and retiring ids): the key was deleted in B2."""
        lines = self._lines()
        for suffix in (self.ID_SUFFIX, self.SECRET_SUFFIX, self.RETIRING_SUFFIX,
                       self.ROTATION_SUFFIX):
            lines.pop(name + suffix, None)
        self._write(lines)

    def values(self) -> list[str]:
        """Every stored secret, for the runner's scrub and leak scan. Never print this."""
        return [secret.reveal() for _, secret in self.load().values()]


def key_store_path(env: str) -> Path:
    return secrets_file(env).with_name(f"{env}.b2-keys.env")


def key_store(env: str) -> B2KeyStore:
    return B2KeyStore(key_store_path(env))


def stored_secret_values(env: str) -> list[str]:
    """The app keys' secrets, so the runner can scrub outputs of them too (they are made
    during the run, after the runner read the environment's secrets)."""
    return key_store(env).values()
