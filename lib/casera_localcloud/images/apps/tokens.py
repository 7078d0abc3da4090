"""Signed tokens, and the SECRET_KEY rotation contract the rotation runbook relies on.

The contract (Casera's real app must meet it before runbooks/rotate-secrets.ipynb rotates its
SECRET_KEY):
- a token is SIGNED with the current key only: ``/run/secrets/secret_key``;
- a token is ACCEPTED when it verifies with the current key or with the key in
  ``/run/secrets/secret_key_accept`` (when that file exists);
- both files are read when a task starts; a task never sees a file change (a new secret
  reaches only new tasks).

The runbook then rotates in two rolls with no token refused: roll 1 mounts the new key as
``secret_key_accept`` (every task still signs with the old one and accepts both); roll 2 signs
with the new key and keeps the old one as ``secret_key_accept`` (tokens signed before the
rotation still verify). The format here is the stand-in's own: base64url(JSON payload) "."
base64url(HMAC-SHA256(key, payload)).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from .common import read_secret

SIGNING = "secret_key"
ACCEPTED = "secret_key_accept"
LIFETIME_S = 7 * 24 * 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: str, payload: bytes) -> str:
    return _b64(hmac.new(key.encode(), payload, hashlib.sha256).digest())


def keys() -> dict[str, str]:
    """"current" (signs and verifies) and, when mounted, "accepted" (verifies only)."""
    found = {}
    current, _ = read_secret(SIGNING)
    if current:
        found["current"] = current
    accepted, source = read_secret(ACCEPTED)
    if accepted and source == "file" and accepted != current:
        found["accepted"] = accepted
    return found


def mint(subject: str, now: float | None = None) -> str:
    key = keys().get("current")
    if not key:
        raise RuntimeError(f"no {SIGNING}: nothing to sign with")
    issued = int(now if now is not None else time.time())
    payload = json.dumps({"sub": subject, "iat": issued, "exp": issued + LIFETIME_S},
                         separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_sign(key, payload)}"


def verify(token: str, now: float | None = None) -> dict[str, Any] | None:
    """{"sub", "signed_with": current|accepted} for a valid, unexpired token; else None."""
    try:
        head, signature = token.split(".", 1)
        payload = _unb64(head)
        claims = json.loads(payload)
    except (ValueError, TypeError):
        return None
    for which, key in keys().items():
        if hmac.compare_digest(_sign(key, payload), signature):
            if int(claims.get("exp", 0)) < (now if now is not None else time.time()):
                return None
            return {"sub": claims.get("sub"), "signed_with": which}
    return None
