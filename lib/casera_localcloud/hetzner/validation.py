"""Request bodies checked against Hetzner's OpenAPI description before a handler runs.

The spec is package data (``data/hcloud-openapi.json``, a copy of openapi/hcloud.json from
the public repo MaximilianKoestler/hcloud-openapi, itself generated from
docs.hetzner.cloud). A body the spec refuses gets Hetzner's ``invalid_input`` with
``details.fields`` naming each field and what is wrong, the shape hcloud-go decodes as
``ErrorDetailsInvalidInput`` (hetznercloud/hcloud-go, hcloud/error.go), so a client that
would be refused by Hetzner is refused here too.

OpenAPI 3.0 is not JSON Schema: ``nullable`` becomes a ``null`` type, and a nullable
``allOf`` of one ``$ref`` becomes ``anyOf [ref, null]``. Two relaxations, both written in the
spec itself: a field whose description says "ID or name" takes an integer id as well as a
name (the spec types it as a string; hcloud-python sends ``id_or_name``, an int when it has
one); and a nullable field may be left out, which means null (some request bodies reuse a
response schema whose ``required`` lists them; hcloud-python omits a health check's null
``domain``, and it is Hetzner's own client).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator

from casera_localcloud.hetzner.errors import ApiError

SPEC_FILE = Path(__file__).parent / "data" / "hcloud-openapi.json"
_ID_OR_NAME = ("id or name", "ids (`integer`) or names (`string`)")


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema objects rewritten as JSON Schema draft 4 (see the module doc)."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    nullable = {name for name, prop in (node.get("properties") or {}).items()
                if isinstance(prop, dict) and prop.get("nullable") is True}
    node = {key: _json_schema(value) for key, value in node.items()
            if key not in ("example", "examples")}
    if nullable and isinstance(node.get("required"), list):
        node["required"] = [name for name in node["required"] if name not in nullable]
    description = str(node.get("description", "")).lower()
    if node.get("type") == "string" and any(words in description for words in _ID_OR_NAME):
        node["type"] = ["string", "integer"]
    if node.get("type") == "array" and any(words in description for words in _ID_OR_NAME) \
            and node.get("items", {}).get("type") == "string":
        node["items"] = {**node["items"], "type": ["string", "integer"]}
    if node.pop("nullable", False) is True:
        if len(node.get("allOf", [])) == 1:
            node["anyOf"] = [node.pop("allOf")[0], {"type": "null"}]
        elif isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        elif isinstance(node.get("type"), list):
            node["type"] = [*node["type"], "null"]
    return node


@cache
def spec() -> dict[str, Any]:
    """The spec as shipped: the tests check the emulator's answers against it too."""
    return json.loads(SPEC_FILE.read_text())


@cache
def _components() -> dict[str, Any]:
    return _json_schema(spec()["components"])


@cache
def _validator(method: str, template: str) -> Draft4Validator | None:
    operation = spec()["paths"].get(template, {}).get(method.lower())
    if not operation or "requestBody" not in operation:
        return None
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    # "#/components/..." resolves against the root document, so the components go there.
    root = {"allOf": [_json_schema(schema)], "components": _components()}
    return Draft4Validator(root)


def _field_name(path: list[str | int], fallback: str) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else fallback


def validate_body(method: str, template: str, body: dict[str, Any]) -> None:
    """Raise Hetzner's ``invalid_input`` naming every field the spec refuses."""
    validator = _validator(method, template)
    if validator is None:
        return
    fields: dict[str, list[str]] = {}
    for error in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.path))):
        name = _field_name(list(error.absolute_path), "body")
        if error.validator == "required":
            # The missing property is named in the message, not in the path.
            missing = error.message.split("'")[1] if "'" in error.message else name
            name = f"{name}.{missing}" if error.absolute_path else missing
            message = "is required"
        elif error.validator == "type":
            message = f"must be of type {_types(error.validator_value)}"
        elif error.validator == "enum":
            message = f"must be one of {', '.join(map(str, error.validator_value))}"
        else:
            message = error.message
        fields.setdefault(name, []).append(message)
    if fields:
        names = ", ".join(f"'{name}'" for name in fields)
        raise ApiError("invalid_input", f"invalid input in field{'s' if len(fields) > 1 else ''}"
                       f" {names}", {"fields": [{"name": name, "messages": messages}
                                               for name, messages in fields.items()]})


def _types(value: object) -> str:
    return " or ".join(value) if isinstance(value, list) else str(value)
