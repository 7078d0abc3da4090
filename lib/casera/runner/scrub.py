"""Scrub every known secret value from a text before it is kept, then prove none is left.

Values are searched in the forms a notebook can carry them: as written, JSON-escaped,
URL-quoted and base64 (an image or an attachment). A value shorter than 4 characters is too
short to search for without destroying the notebook; such secrets are refused at load time
elsewhere, and here they are only scanned, never replaced.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

from casera.secrets import MASK

MIN_SECRET_LEN = 4


def _forms(value: str) -> set[str]:
    forms = {value, json.dumps(value)[1:-1], quote(value, safe=""), quote_plus(value)}
    raw = value.encode()
    forms.add(base64.b64encode(raw).decode().rstrip("="))
    return {form for form in forms if len(form) >= MIN_SECRET_LEN}


def scrub(text: str, secrets: list[str]) -> tuple[str, int]:
    """Replace every form of every secret with the mask. Returns (text, replacements)."""
    count = 0
    # Longest first, so a secret that contains another is masked whole.
    for value in sorted(set(secrets), key=len, reverse=True):
        for form in sorted(_forms(value), key=len, reverse=True):
            hits = text.count(form)
            if hits:
                count += hits
                text = text.replace(form, MASK)
    return text, count


def find_leaks(text: str, secrets: list[str]) -> list[str]:
    """Names of the forms still present (never the values themselves)."""
    leaks = []
    for index, value in enumerate(sorted(set(secrets))):
        for form in _forms(value):
            if form in text:
                leaks.append(f"secret #{index + 1} ({len(value)} chars) in some encoded form")
                break
    return leaks
