"""The B2 native API calls the emulator answers, with B2's semantics and answer shapes.

``Operations`` combines the account-level calls (``account_calls``) and the file calls
(``file_calls``); HTTP concerns (routing, streaming bodies) live in ``server.py``.
"""

from __future__ import annotations

from collections.abc import Callable

from casera_localcloud.b2.account_calls import AccountCalls
from casera_localcloud.b2.calls import Call, Limits
from casera_localcloud.b2.file_calls import FileCalls

__all__ = ["Call", "Limits", "Operations"]


class Operations(AccountCalls, FileCalls):
    """B2 semantics over a Store. Methods named ``b2_*`` are the JSON API calls."""

    def json_call(self, name: str) -> Callable[[Call], dict[str, object]] | None:
        # Only b2_* methods are API calls; uploads and downloads are routed by the server.
        method = getattr(self, name, None) if name.startswith("b2_") else None
        return method if callable(method) else None
