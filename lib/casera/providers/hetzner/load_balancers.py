"""Load balancers: read by name, create-or-get, add and delete services, add a label target."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hcloud.certificates import Certificate as HCertificate
from hcloud.load_balancer_types import LoadBalancerType
from hcloud.load_balancers import (
    LoadBalancer as HLoadBalancer,
)
from hcloud.load_balancers import (
    LoadBalancerHealthCheck,
    LoadBalancerHealthCheckHttp,
    LoadBalancerService,
    LoadBalancerServiceHttp,
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
    """A service, health-checked over HTTP at ``health_path`` on the destination port.

    ``https``: TLS ends at the LB with ``certificate_ids``; ``redirect_http`` makes port 80
    answer with a redirect to it (Hetzner's API reference, Load Balancers, service ``http``)."""

    listen_port: int
    destination_port: int
    health_path: str | None = None
    protocol: str = "tcp"
    certificate_ids: tuple[int, ...] = ()
    redirect_http: bool = False
    health_interval: int = 10
    health_timeout: int = 5
    health_retries: int = 3

    def _sdk(self) -> LoadBalancerService:
        check = None if self.health_path is None else LoadBalancerHealthCheck(
            protocol="http", port=self.destination_port, interval=self.health_interval,
            timeout=self.health_timeout, retries=self.health_retries,
            http=LoadBalancerHealthCheckHttp(path=self.health_path, status_codes=["2??"],
                                            tls=False))
        http = None if self.protocol != "https" else LoadBalancerServiceHttp(
            certificates=[HCertificate(id=i) for i in self.certificate_ids],
            redirect_http=self.redirect_http)
        return LoadBalancerService(protocol=self.protocol, listen_port=self.listen_port,
                                   destination_port=self.destination_port,
                                   proxyprotocol=False, health_check=check, http=http)

    @classmethod
    def of(cls, s: Any) -> LBService:
        check, http = s.health_check, s.http if s.protocol == "https" else None
        return cls(listen_port=s.listen_port, destination_port=s.destination_port,
                   health_path=check.http.path if check and check.http else None,
                   protocol=s.protocol,
                   certificate_ids=tuple(int(c.id) for c in (http.certificates or []))
                   if http else (),
                   redirect_http=bool(http.redirect_http) if http else False,
                   health_interval=check.interval if check else 10,
                   health_timeout=check.timeout if check else 5,
                   health_retries=check.retries if check else 3)

    def describe(self) -> str:
        cert = f" certificate {','.join(map(str, self.certificate_ids))}" \
            if self.certificate_ids else ""
        redirect = ", :80 redirects to it" if self.redirect_http else ""
        health = (f", health GET {self.health_path} every {self.health_interval} s "
                  f"(timeout {self.health_timeout} s, {self.health_retries} retries)"
                  if self.health_path else "")
        return (f"{self.protocol} {self.listen_port} -> {self.destination_port}{cert}"
                f"{redirect}{health}")


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
        services = tuple(LBService.of(s) for s in bound.services or [])
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

    def update_service(self, lb: LoadBalancer, service: LBService) -> Action:
        """Replace the service on ``service.listen_port`` (its certificate, health check)."""
        with hetzner_errors(f"update service :{service.listen_port} of {lb.name}", self._where):
            return Action.of(self._api.load_balancers.update_service(
                HLoadBalancer(id=lb.id), service._sdk()))

    def delete_service(self, lb: LoadBalancer, listen_port: int) -> Action:
        with hetzner_errors(f"delete service :{listen_port} of {lb.name}", self._where):
            return Action.of(self._api.load_balancers.delete_service(
                HLoadBalancer(id=lb.id), LoadBalancerService(listen_port=listen_port)))

    def add_label_target(self, lb: LoadBalancer, label_selector: str) -> Action:
        with hetzner_errors(f"add target {label_selector} to {lb.name}", self._where):
            return Action.of(self._api.load_balancers.add_target(
                HLoadBalancer(id=lb.id), _label_target(label_selector)))

    def target_health(self, lb: LoadBalancer) -> dict[int, list[str]]:
        """server id -> the health status of each of the LB's services on it, for every
        server its label-selector targets resolve to (Hetzner lists them under the label
        target's ``targets``; server targets carry ``health_status`` themselves)."""
        with hetzner_errors(f"read the targets of {lb.name}", self._where):
            bound = self._api.load_balancers.get_by_id(lb.id)
        found: dict[int, list[str]] = {}
        for target in bound.targets or []:
            resolved = target.targets if target.type == "label_selector" else [target]
            for t in resolved or []:
                if t.server is not None:
                    found[int(t.server.id)] = [str(h.status) for h in t.health_status or []]
        return found

    def delete(self, lb: LoadBalancer) -> bool:
        """Delete by id (its public address goes back to Hetzner); False when it was already
        gone."""
        return self._delete(lb.name, lambda: self._api.load_balancers.delete(
            HLoadBalancer(id=lb.id))) is not None
