"""Load balancers: read by name, create-or-get, add and delete services, add a label target."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hcloud.load_balancer_types import LoadBalancerType
from hcloud.load_balancers import (
    LoadBalancer as HLoadBalancer,
)
from hcloud.load_balancers import (
    LoadBalancerHealthCheck,
    LoadBalancerHealthCheckHttp,
    LoadBalancerService,
    LoadBalancerTarget,
    LoadBalancerTargetLabelSelector,
)
from hcloud.locations import Location

from casera.errors import ProviderError
from casera.providers.hetzner.actions import Action
from casera.providers.hetzner.errors import hetzner_errors
from casera.providers.hetzner.resource import ResourceClient


@dataclass(frozen=True)
class LBService:
    """A TCP service, health-checked over HTTP at ``health_path`` on the destination port."""

    listen_port: int
    destination_port: int
    health_path: str | None = None
    protocol: str = "tcp"

    def _sdk(self) -> LoadBalancerService:
        check = None if self.health_path is None else LoadBalancerHealthCheck(
            protocol="http", port=self.destination_port, interval=10, timeout=5, retries=3,
            http=LoadBalancerHealthCheckHttp(path=self.health_path, status_codes=["2??"],
                                            tls=False))
        return LoadBalancerService(protocol=self.protocol, listen_port=self.listen_port,
                                   destination_port=self.destination_port,
                                   proxyprotocol=False, health_check=check)


@dataclass(frozen=True)
class LoadBalancer:
    name: str
    id: int
    ipv4: str | None
    type: str
    location: str
    services: tuple[LBService, ...] = ()
    target_labels: tuple[str, ...] = ()  # label selectors among its targets
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, bound: Any) -> LoadBalancer:
        net = bound.public_net
        services = tuple(LBService(
            listen_port=s.listen_port, destination_port=s.destination_port,
            health_path=(s.health_check.http.path if s.health_check and s.health_check.http
                         else None), protocol=s.protocol) for s in bound.services or [])
        selectors = tuple(t.label_selector.selector for t in bound.targets or []
                          if t.type == "label_selector" and t.label_selector)
        return cls(name=bound.name, id=int(bound.id),
                   ipv4=net.ipv4.ip if net is not None and net.ipv4 is not None else None,
                   type=bound.load_balancer_type.name if bound.load_balancer_type else "",
                   location=bound.location.name if bound.location else "",
                   services=services, target_labels=selectors, labels=dict(bound.labels or {}))


def _label_target(label_selector: str) -> LoadBalancerTarget:
    return LoadBalancerTarget(type="label_selector", label_selector=(
        LoadBalancerTargetLabelSelector(selector=label_selector)))


class LoadBalancers(ResourceClient[LoadBalancer]):
    noun, sdk_name = "load balancer", "load_balancers"

    def _fact(self, bound: Any) -> LoadBalancer:
        return LoadBalancer.of(bound)

    def create_or_get(self, name: str, type_name: str, location: str,
                      services: Sequence[LBService], target_label: str,
                      labels: dict[str, str]) -> tuple[LoadBalancer, list[Action]]:
        """Create it; a replayed POST meets ``uniqueness_error`` and returns what it made."""
        try:
            with hetzner_errors(f"create load balancer {name}", self._where):
                response = self._api.load_balancers.create(
                    name=name, load_balancer_type=LoadBalancerType(name=type_name),
                    location=Location(name=location), services=[s._sdk() for s in services],
                    targets=[_label_target(target_label)], labels=dict(labels))
            action = [Action.of(response.action)] if response.action else []
            return LoadBalancer.of(response.load_balancer), action
        except ProviderError as exc:
            found = self.get(name) if exc.code == "uniqueness_error" else None
            if found is None:
                raise
            return found, []

    def add_service(self, lb: LoadBalancer, service: LBService) -> Action:
        with hetzner_errors(f"add service :{service.listen_port} to {lb.name}", self._where):
            return Action.of(self._api.load_balancers.add_service(
                HLoadBalancer(id=lb.id), service._sdk()))

    def delete_service(self, lb: LoadBalancer, listen_port: int) -> Action:
        with hetzner_errors(f"delete service :{listen_port} of {lb.name}", self._where):
            return Action.of(self._api.load_balancers.delete_service(
                HLoadBalancer(id=lb.id), LoadBalancerService(listen_port=listen_port)))

    def add_label_target(self, lb: LoadBalancer, label_selector: str) -> Action:
        with hetzner_errors(f"add target {label_selector} to {lb.name}", self._where):
            return Action.of(self._api.load_balancers.add_target(
                HLoadBalancer(id=lb.id), _label_target(label_selector)))
