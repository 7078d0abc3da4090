"""A git-ignored ``KEY=VALUE`` file of secrets the tools made and the vendor shows only once
(B2 application keys, Neon role passwords): read line by line without ever echoing a value,
written atomically and created 0600."""

from __future__ import annotations

import os
from pathlib import Path

from casera.errors import SecretMissingError


class SecretFile:
    """Subclasses set ``HEADER`` (the comment written on top) and whether empty values are
    written (``KEEP_EMPTY``)."""

    HEADER = "# Made by casera. Never commit it.\n"
    KEEP_EMPTY = True

    def __init__(self, path: Path) -> None:
        self.path = path

    def _lines(self) -> dict[str, str]:
        values: dict[str, str] = {}
        if not self.path.exists():
            return values
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if "=" not in text:
                # The line may hold a secret: name the line, never its content.
                raise SecretMissingError(f"{self.path}:{number}: not KEY=VALUE; fix that line "
                                         "(its content is not shown)")
            key, _, value = text.partition("=")
            values[key.strip()] = value.strip()
        return values

    def _write(self, lines: dict[str, str]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        # Created 0600 from the start: a chmod after writing would leave a readable window.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.HEADER)
            out.writelines(f"{k}={v}\n" for k, v in sorted(lines.items())
                           if v or self.KEEP_EMPTY)
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)
