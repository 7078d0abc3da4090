"""How to reach the api through the load balancer: THE one place that knows the URL and the
CA to trust, for steps, probes and tests alike.

With the edge on (``params.edge``), the LB answers HTTPS on ``edge.https_listen_port`` with the
origin certificate for the API's hostname, and port 80 only redirects. The certificate names
the hostname, not the LB's address, and is signed by Cloudflare's Origin CA (which no browser
trusts; Cloudflare does, in Full strict mode), so a client here connects to the LB's address,
asks for the hostname (SNI and ``Host``) and trusts ``edge.origin_ca_root_file`` explicitly.
Without the edge it is plain http on port 80, as before.

    endpoint = api_endpoint_for(params, lb_ipv4)
    status, body = endpoint.get("/readyz")
    endpoint.requests_session().get(endpoint.url("/readyz"))  # the same, through requests
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from casera.paths import project_dir
from casera.steps.dns import record_name

if TYPE_CHECKING:
    import requests

    from casera.params import Params


@dataclass(frozen=True)
class ApiEndpoint:
    address: str  # where to connect: the LB's public IPv4
    port: int
    hostname: str | None  # the TLS name checked and the Host sent; None: plain http
    ca_file: Path | None  # the only CA trusted for it; None: plain http

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    @property
    def base_url(self) -> str:
        """The URL to connect to (the LB's address): send ``Host: hostname`` with it."""
        return f"{'https' if self.tls else 'http'}://{self.address}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts ``ca_file`` only, checks the hostname, TLS 1.2 at least."""
        if self.ca_file is None:
            raise ValueError(f"{self.base_url} is plain http")
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if not self.tls:
            return http.client.HTTPConnection(self.address, self.port, timeout=timeout)
        return _PinnedHTTPS(self.address, self.port, self.hostname or self.address,
                            self.ssl_context(), timeout)

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """(status, body) of ``GET path``; a TLS or connection failure raises OSError."""
        conn = self._connection(timeout)
        try:
            conn.request("GET", path, headers={"Host": self.hostname or self.address,
                                               "Connection": "close"})
            answer = conn.getresponse()
            return answer.status, answer.read().decode(errors="replace")
        finally:
            conn.close()

    def redirect_location(self, path: str, timeout: float = 5.0) -> tuple[int, str | None]:
        """(status, Location header) of ``GET path``, the redirect not followed."""
        conn = self._connection(timeout)
        try:
            conn.request("GET", path, headers={"Host": self.hostname or self.address,
                                               "Connection": "close"})
            answer = conn.getresponse()
            answer.read()
            return answer.status, answer.getheader("Location")
        finally:
            conn.close()

    def peer_certificate_der(self, timeout: float = 5.0) -> bytes:
        """The certificate the LB presents for ``hostname``, verified against ``ca_file``."""
        with socket.create_connection((self.address, self.port), timeout=timeout) as raw, \
                self.ssl_context().wrap_socket(raw, server_hostname=self.hostname) as tls:
            der = tls.getpeercert(binary_form=True)
        if der is None:
            raise ssl.SSLError("no peer certificate")
        return der

    def requests_session(self) -> requests.Session:
        """A ``requests`` session for :meth:`url`: trusts ``ca_file``, checks ``hostname``
        (sent as SNI and Host) although the URL holds the LB's address."""
        import requests
        from requests.adapters import HTTPAdapter

        endpoint = self

        class _Adapter(HTTPAdapter):
            def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
                if endpoint.tls:
                    kwargs.update(server_hostname=endpoint.hostname,
                                  assert_hostname=endpoint.hostname)
                super().init_poolmanager(*args, **kwargs)

        session = requests.Session()
        # Not the environment's: REQUESTS_CA_BUNDLE would win over session.verify
        # (psf/requests#3829), and no proxy stands between this machine and its LB.
        session.trust_env = False
        session.mount(self.base_url, _Adapter())
        session.headers["Host"] = self.hostname or self.address
        if self.ca_file is not None:
            session.verify = str(self.ca_file)
        return session


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to an address, verifying the certificate for another name (SNI included)."""

    def __init__(self, address: str, port: int, hostname: str, context: ssl.SSLContext,
                 timeout: float) -> None:
        super().__init__(address, port, timeout=timeout, context=context)
        self._tls_name, self._tls_context = hostname, context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls_context.wrap_socket(self.sock, server_hostname=self._tls_name)


def origin_ca_file(params: Params) -> Path | None:
    """``edge.origin_ca_root_file``, relative to the project when not absolute."""
    if params.edge is None:
        return None
    path = Path(params.edge.origin_ca_root_file)
    return path if path.is_absolute() else project_dir() / path


def api_endpoint_for(params: Params, lb_ipv4: str) -> ApiEndpoint:
    """The api through the LB at ``lb_ipv4``: HTTPS with the origin certificate when the edge
    is on, else plain http on the first LB service's port."""
    if params.edge is not None:
        return ApiEndpoint(lb_ipv4, params.edge.https_listen_port, record_name(params),
                           origin_ca_file(params))
    services = params.load_balancer.services
    return ApiEndpoint(lb_ipv4, services[0].listen_port if services else 80, None, None)
