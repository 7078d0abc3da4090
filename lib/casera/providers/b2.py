"""Backblaze B2 through ``b2sdk``. ``realm`` is 'production' for Backblaze or the base URL of
an emulator: b2sdk uses an unknown realm as the base URL (notes/ops-facts.md)."""

from __future__ import annotations

from b2sdk.v2 import B2Api, InMemoryAccountInfo

from casera.secrets import Secret


def authorize(realm: str, key_id: Secret, key: Secret) -> B2Api:
    api = B2Api(InMemoryAccountInfo())
    api.authorize_account(realm, key_id.reveal(), key.reveal())
    return api
