"""B2 native API emulator: what ``params/local.yaml`` points b2sdk at.

b2sdk's own RawSimulator enforces key scopes but not download tokens, hands out fake URLs and
lives in one process; this is an HTTP server with state on disk, so notebooks in different
kernels share buckets and a restart keeps them. Drive it with the unmodified b2sdk::

    api = B2Api(InMemoryAccountInfo())
    api.authorize_account("http://127.0.0.1:18003", key_id, key)

Modules: ``store`` (SQLite + blobs), ``auth`` (tokens, capabilities, restrictions),
``operations`` (the API calls), ``server`` (HTTP routing), ``service`` (up/down/status).
"""

from __future__ import annotations

from casera_localcloud.b2.service import DEFAULT_PORT, down, status, up

__all__ = ["DEFAULT_PORT", "down", "status", "up"]
