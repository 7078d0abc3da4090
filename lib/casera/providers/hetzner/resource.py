"""What every Hetzner resource client shares, as hcloud-python's ``core/client.py`` does for
its own: the SDK client and the endpoint it points at, ``get`` by name returning the
resource's facts as plain data (or None), and ``_delete`` treating "already gone" as done."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from hcloud import Client

from casera.errors import ProviderError
from casera.providers.hetzner.errors import hetzner_errors

Fact = TypeVar("Fact")
T = TypeVar("T")


class ResourceClient(Generic[Fact]):
    noun: ClassVar[str]  # "firewall", said in errors
    sdk_name: ClassVar[str]  # the hcloud client attribute: "firewalls"

    def __init__(self, api: Client, where: str) -> None:
        self._api, self._where = api, where

    @property
    def _sdk(self) -> Any:
        return getattr(self._api, self.sdk_name)

    def _fact(self, bound: Any) -> Fact:
        raise NotImplementedError

    def get(self, name: str) -> Fact | None:
        with hetzner_errors(f"read {self.noun} {name}", self._where):
            found = self._sdk.get_by_name(name)
        return self._fact(found) if found is not None else None

    def _delete(self, name: str, call: Callable[[], T]) -> T | None:
        """Run a delete; None when the object was already gone (someone else deleted it, or a
        run stopped after the delete): a re-run then converges instead of failing."""
        try:
            with hetzner_errors(f"delete {self.noun} {name}", self._where):
                return call()
        except ProviderError as exc:
            if exc.code == "not_found":
                return None
            raise
