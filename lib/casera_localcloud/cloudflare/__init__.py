"""Cloudflare DNS API emulator: what ``params/local.yaml`` points the ``cloudflare`` SDK at.

A stateful HTTP server speaking the few v4 endpoints the runbooks use (zones, DNS records),
with Cloudflare's envelope, error codes and record rules; state on disk so notebooks in
different kernels share it and a restart keeps it. Drive it with the unmodified SDK::

    cf = Cloudflare(api_token=token, base_url="http://127.0.0.1:18004/client/v4")
    zone = next(iter(cf.zones.list(name="casera.test")))

Modules: ``store`` (JSON state), ``api`` (the calls and their rules), ``errors``
(Cloudflare's codes), ``server`` (HTTP, auth, envelope), ``service`` (up/down/status).
"""

from __future__ import annotations

from casera_localcloud.cloudflare.service import DEFAULT_PORT, down, status, up

__all__ = ["DEFAULT_PORT", "down", "status", "up"]
