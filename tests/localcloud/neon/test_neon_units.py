"""Pieces of the local Neon that need no running server."""

from __future__ import annotations

import base64
import hashlib
import hmac

from casera_localcloud.neon.cluster import allowlist_networks, hba_client_lines
from casera_localcloud.neon.service import scram_matches


def test_allowlist_entries_become_cidrs():
    assert allowlist_networks(["10.77.0.11", "10.0.0.0/24", "192.168.1.10-192.168.1.13"]) == [
        "10.77.0.11/32", "10.0.0.0/24", "192.168.1.10/31", "192.168.1.12/31"]


def test_empty_allowlist_allows_everyone_but_only_over_tls():
    lines = hba_client_lines(None)
    assert lines[0].startswith("hostnossl") and lines[0].endswith("reject")
    assert "hostssl all all 0.0.0.0/0 scram-sha-256" in lines
    narrowed = hba_client_lines(["10.77.0.11"])
    assert [ln for ln in narrowed if ln.startswith("hostssl")] == [
        "hostssl all all 10.77.0.11/32 scram-sha-256"]


def _verifier(password: str, salt: bytes = b"0123456789abcdef", iterations: int = 4096) -> str:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}$"
            f"{b64(hashlib.sha256(client_key).digest()).decode()}:{b64(server_key).decode()}")


def test_scram_verifier_check():
    verifier = _verifier("s3cret")
    assert scram_matches(verifier, "s3cret")
    assert not scram_matches(verifier, "other")
    assert not scram_matches(None, "s3cret")
    assert not scram_matches("md5abc", "s3cret")
