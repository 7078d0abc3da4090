"""The stand-in api's SECRET_KEY contract (apps/tokens.py): sign with the current key, accept
the current key and the one in ``secret_key_accept``; through the two rolls of a rotation no
token is refused, and a token signed before the rotation still verifies after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from casera_localcloud.images.apps import tokens

OLD, NEW = "old-key-5b0c2d7e9f", "new-key-8a1e3c6d2b"


def mounted(monkeypatch: pytest.MonkeyPatch, root: Path, current: str,
            accept: str | None = None) -> None:
    """What one task has under /run/secrets: a task reads them, a new task the new ones."""
    directory = root / f"{current}-{accept}"
    directory.mkdir(exist_ok=True)
    (directory / "secret_key").write_text(current)
    if accept:
        (directory / "secret_key_accept").write_text(accept)
    monkeypatch.setenv("CASERA_SECRETS_DIR", str(directory))
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("SECRET_KEY_ACCEPT", raising=False)


def test_two_rolls_refuse_no_token_and_old_tokens_survive(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    mounted(monkeypatch, tmp_path, OLD)
    before = tokens.mint("alice")
    assert tokens.verify(before) == {"sub": "alice", "signed_with": "current"}
    # Roll 1: new tasks sign with the old key and accept the new one; old tasks unchanged.
    mounted(monkeypatch, tmp_path, OLD, NEW)
    during_1 = tokens.mint("bob")
    assert tokens.verify(before) and tokens.verify(during_1)
    mounted(monkeypatch, tmp_path, OLD)  # an old task still running: all tokens are old-signed
    assert tokens.verify(during_1)
    # Roll 2: sign with the new key, accept the old; roll-1 tasks accept both.
    mounted(monkeypatch, tmp_path, NEW, OLD)
    during_2 = tokens.mint("carol")
    assert tokens.verify(before) == {"sub": "alice", "signed_with": "accepted"}
    mounted(monkeypatch, tmp_path, OLD, NEW)  # a roll-1 task still running
    assert tokens.verify(during_2) == {"sub": "carol", "signed_with": "accepted"}


def test_forged_expired_or_malformed_tokens_are_refused(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    mounted(monkeypatch, tmp_path, OLD)
    token = tokens.mint("alice", now=1000.0)
    assert tokens.verify(token, now=1000.0)
    assert tokens.verify(token, now=1000.0 + tokens.LIFETIME_S + 1) is None
    head, _ = token.split(".")
    assert tokens.verify(f"{head}.{'A' * 43}", now=1000.0) is None
    assert tokens.verify("not-a-token") is None and tokens.verify("") is None
    mounted(monkeypatch, tmp_path, NEW)  # a key nobody accepts any more
    assert tokens.verify(token, now=1000.0) is None


def test_the_accept_key_never_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    mounted(monkeypatch, tmp_path, NEW)
    monkeypatch.setenv("SECRET_KEY_ACCEPT", OLD)
    assert tokens.keys() == {"current": NEW}
