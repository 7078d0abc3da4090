"""Hetzner label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``,
``k notin (a,b)``; a comma joins terms with AND (a comma inside parentheses does not)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from casera_localcloud.hetzner.errors import ApiError

Matcher = Callable[[Mapping[str, str]], bool]

_KEY = r"[A-Za-z0-9./_-]+"
_VALUE = r"[A-Za-z0-9._-]*"
_SET_TERM = re.compile(rf"^({_KEY})\s+(in|notin)\s+\(([^)]*)\)$")
_CMP_TERM = re.compile(rf"^({_KEY})\s*(==|!=|=)\s*({_VALUE})$")
_EXISTS_TERM = re.compile(rf"^(!?)\s*({_KEY})$")
_LABEL_VALUE = re.compile(r"^(|[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])$")
_LABEL_KEY = re.compile(r"^([a-z0-9A-Z.-]{1,253}/)?[a-zA-Z0-9]([a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?$")


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += char
    terms.append(current.strip())
    return [t for t in terms if t]


def _term_matcher(term: str) -> Matcher:
    if m := _SET_TERM.match(term):
        key, op, raw = m.groups()
        values = {v.strip() for v in raw.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        # notin also matches objects without the key, like Kubernetes selectors.
        return lambda labels: labels.get(key) not in values
    if m := _CMP_TERM.match(term):
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _EXISTS_TERM.match(term):
        negate, key = m.groups()
        if negate:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise ApiError("invalid_input", f"label_selector: cannot parse term {term!r}",
                   {"fields": [{"name": "label_selector", "messages": [term]}]})


def parse_selector(selector: str) -> Matcher:
    """Compile a selector once; raises ``ApiError(invalid_input)`` on bad syntax."""
    matchers = [_term_matcher(term) for term in _split_terms(selector)]
    return lambda labels: all(match(labels) for match in matchers)


def matches(selector: str, labels: Mapping[str, str]) -> bool:
    return parse_selector(selector)(labels)


def validate_labels(labels: object, field: str = "labels") -> dict[str, str]:
    """Reject what Hetzner rejects, so a runbook that works here works there."""
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise ApiError("invalid_input", f"{field} must be an object")
    for key, value in labels.items():
        if not isinstance(value, str) or not _LABEL_VALUE.match(value):
            raise ApiError("invalid_input", f"invalid label value {value!r} for key {key!r}",
                           {"fields": [{"name": field, "messages": [f"bad value for {key}"]}]})
        if not _LABEL_KEY.match(key):
            raise ApiError("invalid_input", f"invalid label key {key!r}",
                           {"fields": [{"name": field, "messages": [f"bad key {key}"]}]})
    return dict(labels)
