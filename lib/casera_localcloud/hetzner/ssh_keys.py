"""/ssh_keys: create, list, get, update (name, labels), delete."""

from __future__ import annotations

import base64
import binascii
import hashlib

from casera_localcloud.hetzner.app import (
    ApiRequest,
    Emulator,
    Response,
    filtered,
    now,
    page,
    require,
    sorted_by_request,
    update_name_and_labels,
)
from casera_localcloud.hetzner.errors import ApiError, invalid_field, uniqueness
from casera_localcloud.hetzner.labels import validate_labels
from casera_localcloud.hetzner.store import public


def fingerprint(public_key: str) -> str:
    """MD5 of the key blob, colon separated, as Hetzner shows it."""
    parts = public_key.split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise invalid_field("public_key", "not an OpenSSH public key")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise invalid_field("public_key", "key data is not base64") from None
    digest = hashlib.md5(blob).hexdigest()  # noqa: S324 - it is a fingerprint, not security
    return ":".join(digest[i:i + 2] for i in range(0, 32, 2))


def create_ssh_key(app: Emulator, req: ApiRequest) -> Response:
    name = require(req.body, "name")
    public_key = require(req.body, "public_key").strip()
    labels = validate_labels(req.body.get("labels"))
    print_ = fingerprint(public_key)
    with app.store.lock:
        if app.store.find_by_name("ssh_keys", name):
            raise uniqueness("name")
        if any(k["fingerprint"] == print_ for k in app.store.table("ssh_keys").values()):
            raise ApiError("uniqueness_error", "SSH key with the same fingerprint already exists",
                           {"fields": [{"name": "public_key"}]})
        key = {"id": app.store.new_id(), "name": name, "public_key": public_key,
               "fingerprint": print_, "labels": labels, "created": now()}
        app.store.table("ssh_keys")[key["id"]] = key
    app.store.save()
    return 201, {"ssh_key": public(key)}


def list_ssh_keys(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        items = filtered(req, app.store.table("ssh_keys").values())
        if fp := req.param("fingerprint"):
            items = [k for k in items if k["fingerprint"] == fp]
        return 200, page(req, "ssh_keys", public(sorted_by_request(req, items)))


def get_ssh_key(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        return 200, {"ssh_key": public(app.store.get("ssh_keys", req.path_params["id"]))}


def update_ssh_key(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        key = app.store.get("ssh_keys", req.path_params["id"])
        update_name_and_labels(app, "ssh_keys", key, req.body)
    app.store.save()
    return 200, {"ssh_key": public(key)}


def delete_ssh_key(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        key = app.store.get("ssh_keys", req.path_params["id"])
        del app.store.table("ssh_keys")[key["id"]]
    app.store.save()
    return 204, None


def resolve_ssh_keys(app: Emulator, refs: list[object]) -> list[dict]:
    """Keys given by id or name, as POST /servers accepts both."""
    keys = []
    for ref in refs:
        key = next((k for k in app.store.table("ssh_keys").values()
                    if k["name"] == ref or str(k["id"]) == str(ref)), None)
        if key is None:
            raise ApiError("not_found", f"SSH key {ref!r} not found",
                           {"fields": [{"name": "ssh_keys"}]})
        keys.append(key)
    return keys
