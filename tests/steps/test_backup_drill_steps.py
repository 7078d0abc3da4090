"""The backup drill's pieces that need no cloud: the checksum verdict, and a real dump
restored into a real scratch PostgreSQL (Debian's postgresql-15 binaries, started and
stopped by the provider in a temp dir) with its row counts read back."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from casera.errors import ProviderError
from casera.providers import postgres
from casera.steps.backup_drill import checksum_finding, sha256_file


def test_a_checksum_matches_only_the_bytes_that_were_uploaded(tmp_path: Path):
    dump = tmp_path / "casera.dump"
    dump.write_bytes(b"PGDMP" + b"\x01" * 100)
    recorded = sha256_file(dump)
    assert checksum_finding(sha256_file(dump), recorded) == (
        True, f"{recorded[:16]}... matches the upload's metadata")
    # One flipped byte (bit rot) or other bytes under the old checksum (a replaced object).
    dump.write_bytes(b"PGDMP" + b"\x01" * 99 + b"\x02")
    ok, detail = checksum_finding(sha256_file(dump), recorded)
    assert not ok and "not the dump that was uploaded" in detail and recorded[:16] in detail
    ok, detail = checksum_finding(sha256_file(dump), "")
    assert not ok and "recorded no sha256" in detail


def _dump_of(server: postgres.ScratchServer, dbname: str, target: Path) -> None:
    subprocess.run([str(server.bin_dir / "pg_dump"), "--format=custom", "--host",
                    str(server.socket_dir), "--port", str(server.port), "--username",
                    server.user, "--dbname", dbname, "--file", str(target)], check=True,
                   capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def source_dump(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """A custom-format dump of a small database with the app's shape (a timestamped table
    and one without), made by pg_dump from a first scratch server."""
    work = tmp_path_factory.mktemp("pg-source")
    with postgres.scratch_server() as server:
        with server.connect() as conn:
            conn.execute("CREATE DATABASE live")
        with server.connect("live") as conn:
            conn.execute("CREATE TABLE items (id serial PRIMARY KEY, name text, "
                         "created_at timestamptz DEFAULT now())")
            conn.execute("INSERT INTO items (name) SELECT 'item ' || g "
                         "FROM generate_series(1, 250) g")
            conn.execute("CREATE TABLE settings (key text PRIMARY KEY, value text)")
            conn.execute("INSERT INTO settings VALUES ('a', '1'), ('b', '2')")
        dump = work / "live.dump"
        _dump_of(server, "live", dump)
    return dump, {"items": 250, "settings": 2}


def test_a_dump_restores_whole_into_a_scratch_server_with_its_rows(source_dump, tmp_path):
    dump, rows = source_dump
    assert dump.read_bytes()[:5] == b"PGDMP"
    with postgres.scratch_server() as scratch:
        postgres.restore_dump(scratch, dump, "drill")
        with scratch.connect("drill") as conn:
            restored = postgres.table_facts(conn)
        socket_dir = scratch.socket_dir
        assert "PostgreSQL" in scratch.version
    assert {name: t.rows for name, t in restored.items()} == rows
    assert restored["items"].newest_column == "created_at" and restored["items"].newest
    # Stopped and removed afterwards: its private directory (data, socket, log) is gone.
    assert not socket_dir.parent.exists()


def test_a_truncated_dump_fails_the_restore_and_says_so(source_dump, tmp_path):
    dump, _ = source_dump
    broken = tmp_path / "broken.dump"
    broken.write_bytes(dump.read_bytes()[: len(dump.read_bytes()) // 2])
    with postgres.scratch_server() as scratch, \
            pytest.raises(ProviderError, match="pg_restore of broken.dump failed"):
        postgres.restore_dump(scratch, broken, "drill")


def test_the_runbooks_checked_text_holds_checks_not_notes():
    from casera.result import StepResult
    from casera.steps.backup_drill import checks_summary

    result = StepResult("pg_dump restore drill", "casera-backups/postgres/casera-1.dump")
    result.check("age", True, "3 min")
    result.check("sha256 of postgres/casera-1.dump", False, "mismatch")
    result.note("table items", "3 rows in the dump, 3 live")
    assert checks_summary(result) == "[ ok ] age\n[FAIL] sha256 of <backup>"
