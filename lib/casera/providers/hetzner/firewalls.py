"""Cloud Firewalls: read by name, create-or-get, set rules, apply to a label selector, and the
create that must not converge (the env lock's test-and-set)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hcloud.firewalls import (
    Firewall as HFirewall,
)
from hcloud.firewalls import (
    FirewallResource,
    FirewallResourceLabelSelector,
)
from hcloud.firewalls import (
    FirewallRule as HFirewallRule,
)

from casera.errors import ProviderError
from casera.providers.hetzner.actions import Action, actions_of
from casera.providers.hetzner.errors import hetzner_errors
from casera.providers.hetzner.resource import ResourceClient


@dataclass(frozen=True)
class FirewallRule:
    direction: str  # "in" | "out"
    protocol: str  # tcp, udp, icmp, esp, gre
    port: str | None
    source_ips: tuple[str, ...]
    description: str = ""

    @property
    def key(self) -> tuple[Any, ...]:
        """What makes two rules the same rule (the description does not)."""
        return (self.direction, self.protocol, self.port or None, tuple(sorted(self.source_ips)))

    def _sdk(self) -> HFirewallRule:
        return HFirewallRule(direction=self.direction, protocol=self.protocol, port=self.port,
                             source_ips=list(self.source_ips),
                             description=self.description or None)


@dataclass(frozen=True)
class Firewall:
    name: str
    id: int
    rules: tuple[FirewallRule, ...] = ()
    applied_to_labels: tuple[str, ...] = ()  # label selectors it is applied to
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, bound: Any) -> Firewall:
        rules = tuple(FirewallRule(direction=r.direction, protocol=r.protocol, port=r.port,
                                   source_ips=tuple(r.source_ips or ()),
                                   description=r.description or "")
                      for r in bound.rules or [])
        selectors = tuple(res.label_selector.selector for res in bound.applied_to or []
                          if res.type == "label_selector" and res.label_selector)
        return cls(name=bound.name, id=int(bound.id), rules=rules, applied_to_labels=selectors,
                   labels=dict(bound.labels or {}))


def _selector(label_selector: str) -> FirewallResource:
    return FirewallResource(type="label_selector", label_selector=(
        FirewallResourceLabelSelector(selector=label_selector)))


class Firewalls(ResourceClient[Firewall]):
    noun, sdk_name = "firewall", "firewalls"

    def _fact(self, bound: Any) -> Firewall:
        return Firewall.of(bound)

    def create_or_get(self, name: str, rules: Sequence[FirewallRule], labels: dict[str, str],
                      apply_to_label: str | None = None) -> tuple[Firewall, list[Action]]:
        """Create the firewall with its rules (and applied to ``apply_to_label``); a replayed
        POST meets ``uniqueness_error`` and returns the firewall it made, with no actions
        (the caller verifies the rules it reads back)."""
        resources = [_selector(apply_to_label)] if apply_to_label else None
        try:
            with hetzner_errors(f"create firewall {name}", self._where):
                response = self._api.firewalls.create(
                    name=name, rules=[r._sdk() for r in rules], labels=dict(labels),
                    resources=resources)
            return Firewall.of(response.firewall), actions_of(response.actions)
        except ProviderError as exc:
            found = self.get(name) if exc.code == "uniqueness_error" else None
            if found is None:
                raise
            return found, []

    def create_unique(self, name: str, labels: dict[str, str]) -> Firewall | None:
        """Create an empty firewall (no rules, applied to nothing), or None when the name is
        taken: a firewall's name "Must be unique per Project" (the create-firewall schema of
        https://docs.hetzner.cloud/reference/cloud#firewalls-create-a-firewall), so this is an
        atomic test-and-set. Unlike :meth:`create_or_get`, a taken name is an answer here."""
        try:
            with hetzner_errors(f"create firewall {name}", self._where):
                response = self._api.firewalls.create(name=name, labels=dict(labels))
        except ProviderError as exc:
            if exc.code == "uniqueness_error":
                return None
            raise
        return Firewall.of(response.firewall)

    def set_rules(self, firewall: Firewall, rules: Sequence[FirewallRule]) -> list[Action]:
        with hetzner_errors(f"set the rules of firewall {firewall.name}", self._where):
            return actions_of(self._api.firewalls.set_rules(
                HFirewall(id=firewall.id), [r._sdk() for r in rules]))

    def apply_to_label(self, firewall: Firewall, label_selector: str) -> list[Action]:
        with hetzner_errors(f"apply firewall {firewall.name} to {label_selector}",
                            self._where):
            return actions_of(self._api.firewalls.apply_to_resources(
                HFirewall(id=firewall.id), [_selector(label_selector)]))

    def remove_from_label(self, firewall: Firewall, label_selector: str) -> list[Action]:
        """Stop applying the firewall to ``label_selector``: Hetzner refuses to delete a
        firewall still applied to anything (``resource_in_use``)."""
        with hetzner_errors(f"remove firewall {firewall.name} from {label_selector}",
                            self._where):
            return actions_of(self._api.firewalls.remove_from_resources(
                HFirewall(id=firewall.id), [_selector(label_selector)]))

    def delete(self, firewall: Firewall) -> bool:
        """Delete by id; False when it was already gone (someone else deleted it)."""
        return self._delete(firewall.name, lambda: self._api.firewalls.delete(
            HFirewall(id=firewall.id))) is not None
