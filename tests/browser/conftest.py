"""A real browser for the tests: Debian's chromium driven by Playwright (its own browser
download cannot work here; ../shared/notes/browser-testing.md has the measured recipe)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # report_fixtures, lab_harness

from lab_harness import chromium  # noqa: E402


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture()
def screenshot(tmp_path: Path) -> Any:
    """Save a screenshot in the test's folder and, when CASERA_SCREENSHOTS names a folder
    (the README's images: `CASERA_SCREENSHOTS=docs/img pytest tests/browser`), there too."""

    def save(page: Any, name: str, full_page: bool = False) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        if os.environ.get("CASERA_SCREENSHOTS"):
            target = Path(os.environ["CASERA_SCREENSHOTS"])
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / path.name)
        return path
    return save
