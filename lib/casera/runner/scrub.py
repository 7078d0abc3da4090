"""Scrub every known secret value from a text before it is kept, then prove none is left.

Two independent parts, so a gap in one is caught by the other:

* :func:`scrub` masks the forms a value is carried in *whole*: as written, JSON-escaped,
  URL-quoted, hex, and base64 of the value itself (an image, an attachment).
* :func:`find_leaks` scans with its own list of encodings, wider than the scrub's: also base64
  and base64url of the value *inside a larger blob* (the value preceded by 0, 1 or 2 bytes, as
  in an HTTP basic ``user:secret`` header or a base64'd config file). Masking a piece of such a
  blob would silently corrupt it and keep the bits around the piece, so the scrub leaves it and
  the scan refuses the file (exit 5): the code that printed it must be fixed.

A value shorter than 4 characters is too short to search for without destroying the notebook;
such secrets are refused at load time elsewhere, and here they are only scanned, never replaced.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, quote_plus

from casera.operator_secrets import MASK

MIN_SECRET_LEN = 4


def _forms(value: str) -> set[str]:
    """What the scrub replaces: encodings of the value on its own."""
    raw = value.encode()
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
             quote(value, safe=""), quote(value), quote_plus(value),
             raw.hex(), raw.hex().upper(),
             base64.b64encode(raw).decode().rstrip("="),
             base64.urlsafe_b64encode(raw).decode().rstrip("=")}
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


def _embedded_base64(raw: bytes) -> set[str]:
    """The base64 characters that depend on ``raw`` alone, wherever it sits in a larger blob.

    Preceded by k bytes (k = 0, 1, 2 modulo 3), character i of the encoding covers bits
    [6i, 6i+6); it is fully determined by ``raw`` when 8k <= 6i and 6i+6 <= 8(k+len). Any
    blob that contains ``raw`` at that alignment contains exactly these characters.
    """
    found = set()
    for k in (0, 1, 2):
        first, end = -(-8 * k // 6), 8 * (k + len(raw)) // 6
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            found.add(encode(b"\0" * k + raw).decode()[first:end])
    return found


def _scan_forms(value: str) -> set[str]:
    """What the scan looks for. Written separately from :func:`_forms` on purpose."""
    raw = value.encode()
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
             quote(value, safe=""), quote(value), quote_plus(value),
             quote(value, safe="").lower(), binascii.hexlify(raw).decode(),
             binascii.hexlify(raw).decode().upper()}
    forms |= _embedded_base64(raw)
    return {form for form in forms if len(form) >= MIN_SECRET_LEN}


def find_leaks(text: str, secrets: list[str]) -> list[str]:
    """Which secrets are still present, and in which kind of form (never the values)."""
    leaks = []
    for index, value in enumerate(sorted(set(secrets))):
        raw = value.encode()
        kinds = {"raw or escaped" for form in _scan_forms(value) - _embedded_base64(raw)
                 if form in text}
        kinds |= {"base64 inside a larger blob" for form in _embedded_base64(raw)
                  if len(form) >= MIN_SECRET_LEN and form in text}
        if kinds:
            leaks.append(f"secret #{index + 1} ({len(value)} chars) as "
                         f"{' and '.join(sorted(kinds))}")
    return leaks


class LiveSecrets:
    """Every secret value of an environment, re-read when its files change.

    Secrets are also made during a run (B2 application keys, stored in
    ``secrets/<env>.b2-keys.env`` the moment B2 shows them), so a list read at the start
    would let the live log print a key made a minute later.
    """

    def __init__(self, env: str, initial: list[str] | None = None) -> None:
        self.env = env
        self._fixed = list(initial or [])
        self._files = secret_files_of(env)
        self._stamp: tuple[float, ...] | None = None
        self._values: list[str] = []

    def _mtimes(self) -> tuple[float, ...]:
        return tuple(p.stat().st_mtime_ns if p.exists() else -1 for p in self._files)

    def __call__(self) -> list[str]:
        stamp = self._mtimes()
        if stamp != self._stamp:
            from casera.b2_keys import stored_secret_values
            from casera.db_roles import stored_secret_values as db_passwords
            from casera.operator_secrets import SecretStore
            from casera.origin_tls import stored_secret_values as origin_keys

            self._values = sorted(set(self._fixed + SecretStore(self.env).values()
                                      + stored_secret_values(self.env)
                                      + db_passwords(self.env)
                                      + origin_keys(self.env)))
            self._stamp = stamp
        return self._values


SecretSource = Callable[[], list[str]]


def secret_files_of(env: str) -> list[Path]:
    """Where an environment's secrets live: ``secrets/<env>.env`` and the B2 keys made by runs
    (``casera.b2_keys``)."""
    from casera.b2_keys import key_store_path
    from casera.db_roles import role_store_path
    from casera.origin_tls import store_dir
    from casera.paths import secrets_file

    # The origin key store is a directory: a key added or replaced changes its mtime.
    return [secrets_file(env), key_store_path(env), role_store_path(env), store_dir(env)]


def install_kernel_scrub(secrets: SecretSource) -> bool:
    """Mask secrets in what an IPython kernel sends to the notebook: stdout, stderr, displayed
    and returned values, tracebacks. For runs the runner does not wrap (JupyterLab, nbval);
    returns False outside a kernel. Installing twice is harmless (the last source wins).

    What passes, once masked, is also handed to the callables in ``shell._casera_scrub["taps"]``
    as ``(kind, payload)``: how ``casera.runner.interactive`` records an interactive run from
    the same text the operator saw, never from the unmasked one."""
    import sys

    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False

    def clean(text: str) -> str:
        values = secrets()
        text = scrub(text, values)[0]
        if find_leaks(text, values):
            return "[casera: output withheld, it holds a secret in a form that cannot be masked]"
        return text

    def clean_data(data: dict) -> dict:
        return {key: clean(value) if isinstance(value, str) else value
                for key, value in data.items()}

    state = getattr(shell, "_casera_scrub", None)
    if state is None:
        state = {"clean": clean, "taps": []}

    def tap(kind: str, *payload: object) -> None:
        for observer in list(state["taps"]):
            observer(kind, *payload)

    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        target = getattr(stream, "_casera_target", stream)
        setattr(sys, name, _ScrubbedWriter(target, clean,
                                           lambda text, name=name: tap("stream", name, text)))

    if getattr(shell, "_casera_scrub", None) is None:
        publish = shell.display_pub.publish

        def scrubbed_publish(data: dict, *args: object, **kwargs: object) -> object:
            data = state["clean_data"](data)
            tap("display", data, args, kwargs)
            return publish(data, *args, **kwargs)

        shell.display_pub.publish = scrubbed_publish
        if hasattr(shell.displayhook, "write_format_data"):
            write = shell.displayhook.write_format_data

            def scrubbed_write(format_dict: dict, md_dict: object = None) -> object:
                format_dict = state["clean_data"](format_dict)
                tap("result", format_dict, md_dict)
                return write(format_dict, md_dict)

            shell.displayhook.write_format_data = scrubbed_write
        show = shell._showtraceback

        def scrubbed_traceback(etype: object, evalue: object, stb: list[str]) -> object:
            value, lines = state["clean"](str(evalue)), [state["clean"](s) for s in stb]
            tap("error", etype, value, lines)
            return show(etype, value, lines)

        shell._showtraceback = scrubbed_traceback
        shell._casera_scrub = state
    state.update(clean=clean, clean_data=clean_data)
    return True


class _ScrubbedWriter:
    """A text stream that masks secrets on the way to ``target``; everything else passes."""

    def __init__(self, target: object, clean: Callable[[str], str],
                 tap: Callable[[str], None] | None = None) -> None:
        self._casera_target = target
        self._clean = clean
        self._tap = tap

    def write(self, text: str) -> int:
        text_out = self._clean(text)
        if self._tap is not None:
            self._tap(text_out)
        self._casera_target.write(text_out)  # type: ignore[attr-defined]
        return len(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self._casera_target, name)

