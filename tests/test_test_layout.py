"""The test tree collects as one session: `make test-quick` runs pytest over all of tests/.

tests/ has no __init__.py files, so pytest imports each test module by its basename; two
modules with one basename (tests/e2e/test_backup_drill.py and a steps test of the same name
did) stop the whole collection with "import file mismatch"."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_two_test_modules_share_a_basename() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        where[path.name].append(str(path.relative_to(TESTS)))
    shared = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not shared, f"rename one of each (e.g. a _steps suffix): {shared}"
