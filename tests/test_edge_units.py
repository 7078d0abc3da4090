"""The edge's pure parts: params checks, the operator's origin key store, and the api
endpoint through the LB against a TLS server of this test (loopback only)."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tls_fixtures import TestCA

from casera.errors import ParamsError
from casera.operator_secrets import Secret
from casera.origin_tls import OriginKeyStore, facts, new_key_and_csr
from casera.params import load_params
from casera.runner.scrub import find_leaks, scrub
from casera.steps.api_endpoint import ApiEndpoint, api_endpoint_for
from casera.steps.firewall import desired_firewall_rules

HOST = "api.casera.test"


def test_edge_params_are_checked() -> None:
    with pytest.raises(ParamsError, match="edge needs the load balancer"):
        load_params("local", overrides={"load_balancer.enabled": False})
    with pytest.raises(ParamsError, match="timeout_s"):
        load_params("local", overrides={"edge.health_check.timeout_s": 5,
                                        "edge.health_check.interval_s": 5})
    with pytest.raises(ParamsError, match="edge.certificate_validity_days"):
        load_params("local", overrides={"edge.certificate_validity_days": 42})
    with pytest.raises(ParamsError, match="edge.hsts.max_age_s"):
        load_params("local", overrides={"edge.hsts.max_age_s": 10**9})


def test_firewall_keywords_resolve_to_the_sources_given() -> None:
    params = load_params("local")
    rules = desired_firewall_rules(params, [], None, {"load_balancer": ["10.77.0.1/32"]})
    http = [r for r in rules if r.port == "80"]
    assert [r.source_ips for r in http] == [("10.77.0.1/32",)]
    assert not any(r.port == "443" for r in rules)
    # Nothing resolved (no LB yet): the rule is left out, never opened to anywhere.
    assert not any(r.port == "80" for r in desired_firewall_rules(params, [], None, {}))


def test_key_store_is_private_and_scrubbed(tmp_path: Path) -> None:
    store = OriginKeyStore(tmp_path / "local.origin-tls")
    ca = TestCA()
    issued = ca.issue(HOST)
    planted = Secret("k", issued.key)
    store.put("origin-g1", issued.certificate, planted)
    crt, key = store.files("origin-g1")
    assert key.stat().st_mode & 0o777 == 0o600 and store.path.stat().st_mode & 0o777 == 0o700
    loaded = store.load("origin-g1")
    assert loaded is not None and loaded[1].reveal() == issued.key and str(loaded[1]) != issued.key
    values = store.values()
    line = issued.key.splitlines()[1]
    text, masked = scrub(f"printed by mistake: {line}", values)
    assert masked and line not in text and not find_leaks(text, values)
    key.unlink()
    with pytest.raises(Exception, match="missing but its pair is there"):
        store.load("origin-g1")


def test_new_key_and_csr_and_facts() -> None:
    key, csr = new_key_and_csr(HOST)
    assert "PRIVATE KEY" in key.reveal() and "PRIVATE" not in csr and str(key) == "********"
    issued = TestCA().issue(HOST, days=40)
    found = facts(issued.certificate)
    assert found.covers(HOST) and not found.covers("other.casera.test")
    assert 38 < found.days_left() < 40


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = f"{self.path} {self.headers['Host']}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_endpoint_checks_the_hostname_against_the_given_ca_only(tmp_path: Path) -> None:
    ca = TestCA()
    issued = ca.issue(HOST)
    (tmp_path / "chain.pem").write_text(issued.key + issued.certificate)
    (tmp_path / "ca.pem").write_text(ca.pem)
    (tmp_path / "other.pem").write_text(TestCA("other").pem)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "chain.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        api = ApiEndpoint("127.0.0.1", port, HOST, tmp_path / "ca.pem")
        assert api.get("/readyz") == (200, f"/readyz {HOST}")
        session = api.requests_session()
        assert session.get(api.url("/readyz"), timeout=5).text == f"/readyz {HOST}"
        with pytest.raises(ssl.SSLCertVerificationError):
            ApiEndpoint("127.0.0.1", port, HOST, tmp_path / "other.pem").get("/")
        with pytest.raises(ssl.SSLCertVerificationError):
            ApiEndpoint("127.0.0.1", port, "other.casera.test", tmp_path / "ca.pem").get("/")
    finally:
        server.shutdown()


def test_endpoint_for_params() -> None:
    api = api_endpoint_for(load_params("local"), "127.0.1.1")
    assert (api.base_url, api.hostname) == ("https://127.0.1.1:443", HOST)
    assert str(api.ca_file) == "/var/lib/casera-local/cloudflare/origin-ca.pem"
    plain = api_endpoint_for(load_params("staging", for_run=False), "203.0.113.5")
    assert plain.base_url == "http://203.0.113.5:80" and not plain.tls
