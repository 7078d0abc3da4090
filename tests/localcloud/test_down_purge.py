"""`casera local down --purge` forgets what the SaaS emulators keep like a real account;
a plain `down` keeps it (a real B2 account or Cloudflare zone outlives a restart too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from casera_localcloud.b2 import service as b2_service
from casera_localcloud.cloudflare import service as cloudflare_service


@pytest.mark.parametrize("service", [b2_service, cloudflare_service], ids=["b2", "cloudflare"])
def test_down_keeps_the_account_and_purge_removes_it(service: object, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "account.db").write_text("buckets, keys, records")
    kept = service.down(state)  # type: ignore[attr-defined]
    assert (state / "account.db").exists() and "kept on disk" in kept[-1]
    purged = service.down(state, purge=True)  # type: ignore[attr-defined]
    assert not state.exists() and f"removed {state}" in purged[-1]


def test_the_cli_passes_purge_only_to_parts_that_keep_an_account(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from casera_localcloud import cli

    seen: dict[str, bool | None] = {}

    class Part:
        def __init__(self, name: str, takes_purge: bool) -> None:
            if takes_purge:
                def down(purge: bool = False) -> list[str]:
                    seen[name] = purge
                    return []
            else:
                def down() -> list[str]:  # type: ignore[misc]
                    seen[name] = None
                    return []
            self.down = down

    parts = {"keeps": Part("keeps", True), "plain": Part("plain", False)}
    monkeypatch.setattr(cli, "PARTS", (("keeps", "keeps"), ("plain", "plain")))
    monkeypatch.setattr(cli, "_module", lambda path: parts[path])
    assert cli.down(purge=True) == 0
    assert seen == {"keeps": True, "plain": None}
