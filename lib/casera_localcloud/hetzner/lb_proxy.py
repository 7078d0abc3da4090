"""The load balancer's data plane: real TCP proxies with health checks, on one asyncio loop
in a background thread. Implements ``backend.LoadBalancerBackend``.

Each service listens on ``host:local_port`` and hands every new connection to the next
healthy target in round-robin order, trying the following one if a connect fails. A target
starts "unknown" and gets no traffic until checks pass, like Hetzner's LB; a healthy target
turns unhealthy after ``retries`` consecutive failures beyond the first, and an unknown or
unhealthy one turns healthy after ``retries`` consecutive passes (at least one): "an
unhealthy target needs the same number of successful retries to become healthy again"
(Hetzner Cloud API, load balancer service health_check.retries,
https://docs.hetzner.cloud/reference/cloud#load-balancers).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass, field

from casera_localcloud.hetzner.backend import ProxyHealthCheck, ProxyService

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5.0
_CHUNK = 64 * 1024


@dataclass
class _TargetState:
    status: str = "unknown"
    failures: int = 0
    passes: int = 0  # consecutive passes while not healthy
    task: asyncio.Task[None] | None = None


def checked(state: _TargetState, ok: bool, retries: int) -> None:
    """``state`` after one health check that passed (``ok``) or failed."""
    if ok:
        state.failures = 0
        state.passes = 0 if state.status == "healthy" else state.passes + 1
        if state.passes >= max(1, retries):
            state.status, state.passes = "healthy", 0
    else:
        state.failures, state.passes = state.failures + 1, 0
        if state.status != "healthy" or state.failures > retries:
            state.status = "unhealthy"


@dataclass
class _Listener:
    service: ProxyService
    server: asyncio.base_events.Server | None = None
    error: str | None = None
    targets: dict[str, _TargetState] = field(default_factory=dict)
    next_index: int = 0
    tls: ssl.SSLContext | None = None

    def healthy(self) -> list[str]:
        return [ip for ip in self.service.target_ips
                if ip in self.targets and self.targets[ip].status == "healthy"]


class LoadBalancerProxies:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="hetzner-lb-proxy")
        self._thread.start()
        self._lbs: dict[int, dict[int, _Listener]] = {}
        # health() reads from other threads while the loop writes.
        self._lock = threading.Lock()

    # --- LoadBalancerBackend -------------------------------------------------------------
    def configure(self, lb_id: int, services: list[ProxyService]) -> None:
        self._call(self._configure(lb_id, services))

    def remove(self, lb_id: int) -> None:
        self._call(self._configure(lb_id, []))

    def health(self, lb_id: int) -> dict[tuple[int, str], str]:
        # A listener that could not bind serves nobody: the API should not say "healthy".
        with self._lock:
            return {(port, ip): "unhealthy" if listener.error else state.status
                    for port, listener in self._lbs.get(lb_id, {}).items()
                    for ip, state in listener.targets.items()}

    def close(self) -> None:
        if not self._loop.is_running():
            return
        with contextlib.suppress(Exception):
            self._call(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    # --- inside the loop -----------------------------------------------------------------
    def _call(self, coro: object, timeout: float = 10) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    async def _configure(self, lb_id: int, services: list[ProxyService]) -> None:
        current = self._lbs.setdefault(lb_id, {})
        wanted = {svc.local_port: svc for svc in services}
        for port in [p for p in current if p not in wanted]:
            await self._close_listener(current[port])
            with self._lock:
                del current[port]
        for port, svc in wanted.items():
            listener = current.get(port)
            if listener is not None and _kind(listener.service) != _kind(svc):
                # tcp <-> tls <-> redirect on one port: a new listener, not a patched one.
                await self._close_listener(listener)
                with self._lock:
                    del current[port]
                listener = None
            if listener is None:
                listener = _Listener(service=svc)
                with self._lock:
                    current[port] = listener
            if listener.tls is not None and svc.tls_certificate and (
                    svc.tls_certificate, svc.tls_private_key) != (
                    listener.service.tls_certificate, listener.service.tls_private_key):
                # A rotated certificate: new handshakes get it, open connections go on.
                _load_chain(listener.tls, svc)
            if listener.server is None:  # new, or its port was taken last time: try again
                try:
                    if svc.tls_certificate and listener.tls is None:
                        listener.tls = _server_context(svc)
                    listener.server = await asyncio.start_server(
                        lambda r, w, lis=listener: self._handle(lis, r, w),
                        svc.listen_host or self.host, port, reuse_address=True,
                        ssl=listener.tls if svc.tls_certificate else None)
                    listener.error = None
                except OSError as exc:
                    listener.error = (f"cannot listen on {svc.listen_host or self.host}:{port}: "
                                      f"{exc}")
                    log.warning(listener.error)
            self._update_targets(listener, svc)
        if not current:
            with self._lock:
                self._lbs.pop(lb_id, None)

    def _update_targets(self, listener: _Listener, svc: ProxyService) -> None:
        check_changed = (listener.service.health_check != svc.health_check
                         or listener.service.destination_port != svc.destination_port)
        listener.service = svc
        with self._lock:
            for ip in [ip for ip in listener.targets if ip not in svc.target_ips]:
                task = listener.targets.pop(ip).task
                if task:
                    task.cancel()
            for ip in svc.target_ips:
                state = listener.targets.get(ip)
                if state and check_changed and state.task:
                    state.task.cancel()
                    state = None
                if state is None:
                    state = listener.targets[ip] = _TargetState()
                    state.task = self._loop.create_task(self._check_loop(listener, ip, state))

    async def _close_listener(self, listener: _Listener) -> None:
        for state in listener.targets.values():
            if state.task:
                state.task.cancel()
        if listener.server:
            listener.server.close()
            # Not wait_closed(): it waits for open client connections to end.

    async def _close_all(self) -> None:
        for listeners in self._lbs.values():
            for listener in listeners.values():
                await self._close_listener(listener)
        with self._lock:
            self._lbs.clear()

    # --- health checks -------------------------------------------------------------------
    async def _check_loop(self, listener: _Listener, ip: str, state: _TargetState) -> None:
        check = listener.service.health_check
        while True:
            try:
                ok = await asyncio.wait_for(_probe(check, ip), timeout=check.timeout)
            except (OSError, TimeoutError, ValueError):
                ok = False
            with self._lock:
                checked(state, ok, check.retries)
            await asyncio.sleep(check.interval)

    # --- forwarding ----------------------------------------------------------------------
    async def _handle(self, listener: _Listener, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        svc = listener.service
        if svc.redirect_to_https:
            await _redirect(reader, writer)
            return
        with self._lock:
            candidates = listener.healthy()
            start = listener.next_index
            listener.next_index += 1
        upstream = None
        for offset in range(len(candidates)):
            ip = candidates[(start + offset) % len(candidates)]
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(ip, svc.destination_port), CONNECT_TIMEOUT_S)
                break
            except (OSError, TimeoutError):
                continue
        if upstream is None:
            writer.close()  # no healthy target: Hetzner's LB also just drops the connection
            return
        up_reader, up_writer = upstream
        if svc.proxyprotocol:
            client = writer.get_extra_info("peername") or ("127.0.0.1", 0)
            target = up_writer.get_extra_info("peername") or (ip, svc.destination_port)
            up_writer.write(f"PROXY TCP4 {client[0]} {target[0]} {client[1]} "
                            f"{target[1]}\r\n".encode())
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (up_writer, writer):
                w.close()


def _kind(svc: ProxyService) -> str:
    return "redirect" if svc.redirect_to_https else "tls" if svc.tls_certificate else "tcp"


def _load_chain(context: ssl.SSLContext, svc: ProxyService) -> None:
    """ssl reads a chain and key only from files: a private temporary file, gone at once."""
    fd, path = tempfile.mkstemp(prefix="casera-lb-", suffix=".pem")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"{svc.tls_private_key}\n{svc.tls_certificate}\n")
        context.load_cert_chain(path)
    finally:
        os.unlink(path)


def _server_context(svc: ProxyService) -> ssl.SSLContext:
    # Hetzner's LB offers TLS 1.2 and 1.3 only (its docs' "TLS termination" section).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, svc)
    return context


REDIRECT_HEAD_MAX = 8192
REDIRECT_READ_S = 10.0


async def _redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """What ``redirect_http`` answers on port 80: 301 to the same host and path on https."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REDIRECT_READ_S)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
        writer.close()
        return
    lines = head[:REDIRECT_HEAD_MAX].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    path = parts[1] if len(parts) == 3 and parts[1].startswith("/") else "/"
    host = next((line.split(":", 1)[1].strip() for line in lines[1:]
                 if line.lower().startswith("host:")), "")
    host = host.rsplit(":", 1)[0] if host and not host.endswith("]") else host
    if not host:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")
    else:
        writer.write(f"HTTP/1.1 301 Moved Permanently\r\nLocation: https://{host}{path}\r\n"
                     f"Content-Length: 0\r\nConnection: close\r\n\r\n".encode("latin-1"))
    with contextlib.suppress(OSError):
        await writer.drain()
    writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction; pass a half-close on so request/response protocols finish."""
    with contextlib.suppress(OSError, RuntimeError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


async def _probe(check: ProxyHealthCheck, ip: str) -> bool:
    reader, writer = await asyncio.open_connection(ip, check.port)
    try:
        if check.protocol == "tcp":
            return True
        host = check.http_domain or ip
        writer.write(f"GET {check.http_path} HTTP/1.1\r\nHost: {host}\r\n"
                     f"User-Agent: casera-local-lb\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 1 else ""
        if not any(fnmatch.fnmatchcase(status, pattern) for pattern in check.http_status_codes):
            return False
        return check.http_response.encode() in body
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
