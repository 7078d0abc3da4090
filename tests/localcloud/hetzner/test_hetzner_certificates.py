"""Uploaded certificates and HTTPS load balancer services through hcloud: the emulator keeps
the key to itself, refuses what Hetzner refuses, and its LB serves a real TLS listener with
the uploaded certificate and answers plain http with a redirect (every answer is checked
against the OpenAPI copy when each test ends, see hetzner_harness.py)."""

from __future__ import annotations

import json
import socket
import ssl
import sys
from pathlib import Path

import pytest
import requests
from hcloud import APIException
from hcloud.certificates import Certificate
from hcloud.load_balancer_types.domain import LoadBalancerType
from hcloud.load_balancers.domain import (
    LoadBalancerHealthCheck,
    LoadBalancerHealthCheckHttp,
    LoadBalancerService,
    LoadBalancerServiceHttp,
    LoadBalancerTarget,
    LoadBalancerTargetIP,
)
from hcloud.locations.domain import Location
from hetzner_harness import Running
from test_hetzner_load_balancer import Backend, backends, wait_until  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tls_fixtures import TestCA  # noqa: E402

HOST = "api.casera.test"


def upload(emulator: Running, name: str, cert: str, key: str) -> Certificate:
    return emulator.client().certificates.create(name=name, certificate=cert, private_key=key)


def refused(call) -> APIException:
    with pytest.raises(APIException) as err:
        call()
    return err.value


def test_upload_keeps_the_key_and_refuses_what_hetzner_refuses(emulator: Running) -> None:
    ca, other = TestCA(), TestCA("another CA")
    leaf = ca.issue(HOST)
    made = upload(emulator, "origin-g1", leaf.certificate + ca.pem, leaf.key)
    assert made.domain_names == [HOST] and made.type == "uploaded"
    assert made.fingerprint and made.fingerprint.count(":") == 31
    listed = emulator.raw("GET", "/certificates").json()["certificates"]
    assert [c["name"] for c in listed] == ["origin-g1"]
    assert leaf.key.splitlines()[1] not in json.dumps(listed)  # never answered back
    assert refused(lambda: upload(emulator, "origin-g1", leaf.certificate, leaf.key)
                   ).code == "uniqueness_error"
    wrong_key = other.issue(HOST).key
    assert refused(lambda: upload(emulator, "x", leaf.certificate, wrong_key)
                   ).code == "invalid_input"
    assert refused(lambda: upload(emulator, "x", "not a certificate", leaf.key)
                   ).code == "invalid_input"
    # Chain out of order: the CA first.
    assert refused(lambda: upload(emulator, "x", ca.pem + leaf.certificate, leaf.key)
                   ).code == "invalid_input"
    expired = ca.issue(HOST, days=1, not_before_days=3)
    assert refused(lambda: upload(emulator, "x", expired.certificate, expired.key)
                   ).code == "invalid_input"
    managed = emulator.raw("POST", "/certificates", json={
        "name": "m", "type": "managed", "domain_names": [HOST]})
    assert managed.status_code == 400, managed.text
    state = Path(emulator.state_dir) / "state.json"
    assert state.stat().st_mode & 0o077 == 0  # it holds the private keys


def _https_service(cert_id: int, port: int, redirect: bool = True) -> LoadBalancerService:
    return LoadBalancerService(
        protocol="https", listen_port=443, destination_port=port, proxyprotocol=False,
        http=LoadBalancerServiceHttp(certificates=[Certificate(id=cert_id)],
                                     redirect_http=redirect),
        health_check=LoadBalancerHealthCheck(
            protocol="http", port=port, interval=1, timeout=1, retries=1,
            http=LoadBalancerHealthCheckHttp(path="/health", status_codes=["2??"], tls=False)))


def _served(port: int, ca_pem: str) -> bytes:
    context = ssl.create_default_context(cadata=ca_pem)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=HOST) as tls:
        return tls.getpeercert(binary_form=True) or b""


def test_https_service_serves_the_certificate_redirects_http_and_rotates(
        emulator: Running, backends: list[Backend]) -> None:  # noqa: F811
    ca = TestCA()
    first, second = ca.issue(HOST), ca.issue(HOST)
    cert1 = upload(emulator, "origin-g1", first.certificate, first.key)
    port = backends[0].server_address[1]
    client = emulator.client()
    created = client.load_balancers.create(
        name="edge", load_balancer_type=LoadBalancerType(name="lb11"),
        location=Location(name="fsn1"), services=[_https_service(cert1.id, port)],
        targets=[LoadBalancerTarget(type="ip", ip=LoadBalancerTargetIP("127.0.0.11"))])
    lb = created.load_balancer
    raw = emulator.raw("GET", f"/load_balancers/{lb.id}").json()["load_balancer"]
    tls_port = raw["services"][0]["emulator_listen_port"]
    redirect_port = emulator.app.store.table("load_balancers")[lb.id]["_redirect_port"]
    assert raw["services"][0]["http"]["certificates"] == [cert1.id]
    # hcloud 2.27 does not read used_by; the API answers it.
    used = emulator.raw("GET", f"/certificates/{cert1.id}").json()["certificate"]["used_by"]
    assert used == [{"id": lb.id, "type": "load_balancer"}]

    from cryptography import x509
    wait_until("the target healthy", lambda: client.load_balancers.get_by_id(
        lb.id).targets[0].health_status[0].status == "healthy")
    served = x509.load_der_x509_certificate(_served(tls_port, ca.pem))
    assert served == x509.load_pem_x509_certificate(first.certificate.encode())
    answer = requests.get(f"https://127.0.0.1:{tls_port}/", timeout=5, verify=False)
    assert answer.status_code == 200 and answer.content == b"127.0.0.11"
    with pytest.raises(ssl.SSLError):  # a client that does not trust the CA is refused
        _served(tls_port, TestCA("stranger").pem)
    plain = requests.get(f"http://127.0.0.1:{redirect_port}/readyz?x=1", timeout=5,
                         headers={"Host": f"{HOST}:80"}, allow_redirects=False)
    assert plain.status_code == 301 and plain.headers["Location"] == f"https://{HOST}/readyz?x=1"

    # Bad input, as Hetzner refuses it.
    assert refused(lambda: lb.add_service(LoadBalancerService(
        protocol="tcp", listen_port=80, destination_port=port, proxyprotocol=False,
        health_check=LoadBalancerHealthCheck(protocol="tcp", port=port, interval=5, timeout=3,
                                             retries=1)))).code == "source_port_already_used"
    no_cert = emulator.raw("POST", f"/load_balancers/{lb.id}/actions/update_service", json={
        "listen_port": 443, "http": {"certificates": []}})
    assert no_cert.status_code == 400, no_cert.text
    certs_on_tcp = emulator.raw("POST", f"/load_balancers/{lb.id}/actions/add_service", json={
        "protocol": "tcp", "listen_port": 8443, "destination_port": port,
        "http": {"certificates": [cert1.id]}})
    assert certs_on_tcp.status_code == 400, certs_on_tcp.text
    assert refused(lambda: client.certificates.delete(cert1)).code == "resource_in_use"

    # Rotation: upload, switch the service, delete the old one; the listener stays up.
    cert2 = upload(emulator, "origin-g2", second.certificate, second.key)
    lb.update_service(_https_service(cert2.id, port)).wait_until_finished()
    served = x509.load_der_x509_certificate(_served(tls_port, ca.pem))
    assert served == x509.load_pem_x509_certificate(second.certificate.encode())
    assert client.certificates.delete(cert1)
    assert [c.name for c in client.certificates.get_all()] == ["origin-g2"]
