"""Who is calling and what their key allows.

Every call is checked against the key behind its token: the capability the call needs, the
buckets the key is restricted to and its file-name prefix. b2sdk also checks bucket
restrictions on the client side, but the runbooks' promise ("a read-only key for casera-certs
cannot touch casera-uploads") must hold for any client, so the emulator enforces it itself.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from casera_localcloud.b2 import errors
from casera_localcloud.b2.store import Key, Store, Token, now_ms

ACCOUNT_TOKEN_TTL_S = 24 * 3600  # B2 account tokens last 24 hours
UPLOAD_TOKEN_TTL_S = 24 * 3600


@dataclass(frozen=True)
class Principal:
    """The key behind a request, and the token it came with."""

    key: Key
    token: Token

    @property
    def account_id(self) -> str:
        return self.key.account_id


def parse_basic_auth(header: str | None) -> tuple[str, str]:
    if not header or not header.startswith("Basic "):
        raise errors.bad_auth_token("b2_authorize_account needs Basic authorization")
    try:
        key_id, _, secret = base64.b64decode(header[6:].strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise errors.bad_auth_token("malformed Basic authorization") from exc
    return key_id, secret


def authorize_account(store: Store, header: str | None) -> tuple[Key, Token]:
    key_id, secret = parse_basic_auth(header)
    key = store.get_key(key_id)
    if key is None and key_id == store.account_id:
        key = store.master_key()  # B2 accepts the account id in place of the master key id
    if key is None or key.secret != secret:
        raise errors.unauthorized("application key id or key is wrong")
    if key.expires_ms is not None and key.expires_ms <= now_ms():
        raise errors.unauthorized("application key has expired")
    return key, store.issue_token("account", key.key_id, ACCOUNT_TOKEN_TTL_S)


def authenticate(store: Store, token_text: str | None, kinds: tuple[str, ...]) -> Principal:
    """Resolve a token of one of ``kinds`` to its key, or raise the error B2 gives."""
    if not token_text:
        raise errors.unauthorized("no Authorization header")
    token = store.get_token(token_text)
    if token is None or token.kind not in kinds:
        raise errors.bad_auth_token()
    if token.expires_ms <= now_ms():
        raise errors.expired_auth_token()
    key = store.get_key(token.key_id)
    if key is None:  # deleted since the token was issued
        raise errors.bad_auth_token("the application key of this token was deleted")
    if key.expires_ms is not None and key.expires_ms <= now_ms():
        raise errors.expired_auth_token("the application key of this token has expired")
    return Principal(key, token)


def require(principal: Principal, capability: str, bucket_id: str | None = None,
            file_name: str | None = None, prefix: str | None = None) -> None:
    """Raise 401 unauthorized unless the key may do ``capability`` there.

    ``file_name`` must lie inside the key's name prefix; a listing ``prefix`` must itself
    start with it (B2 refuses a listing wider than the key, it does not filter it).
    """
    key = principal.key
    if capability not in key.capabilities:
        raise errors.unauthorized(f"application key lacks the {capability} capability")
    if key.bucket_ids is not None and bucket_id not in key.bucket_ids:
        raise errors.unauthorized("application key is restricted to other buckets")
    if key.name_prefix:
        if file_name is not None and not file_name.startswith(key.name_prefix):
            raise errors.unauthorized(
                f"application key is restricted to names starting with {key.name_prefix!r}")
        if prefix is not None and not prefix.startswith(key.name_prefix):
            raise errors.unauthorized(
                f"application key is restricted to names starting with {key.name_prefix!r}")


def may_download(principal: Principal, bucket_id: str, file_name: str) -> None:
    """Check a download by an account token or a download-authorization token."""
    token = principal.token
    if token.kind == "download":
        if token.bucket_id != bucket_id or not file_name.startswith(token.prefix or ""):
            raise errors.unauthorized("download authorization does not cover this file")
        # The key that shared the file must still be allowed to read it.
        require(principal, "shareFiles", bucket_id, file_name)
        return
    require(principal, "readFiles", bucket_id, file_name)
