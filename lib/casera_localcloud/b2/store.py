"""The emulator's state on disk: metadata in SQLite, file contents as blob files.

SQLite rather than a JSON file because b2sdk uploads parts from ~10 threads at once and a
half-written state file after a crash would lose every bucket; each change here is one
transaction. Contents live beside it (``blobs/<fileId>``, ``parts/<fileId>.<n>``) so a
download streams from disk instead of from the database.

This module knows nothing about B2 semantics (who may do what, error codes): that is
``auth.py`` and ``operations.py``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from casera_localcloud.b2.capabilities import ALL_CAPABILITIES

SCHEMA = """
CREATE TABLE IF NOT EXISTS account (
    account_id TEXT PRIMARY KEY, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY, secret TEXT NOT NULL, name TEXT NOT NULL,
    account_id TEXT NOT NULL, capabilities TEXT NOT NULL, bucket_ids TEXT,
    name_prefix TEXT, expires_ms INTEGER, is_master INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token TEXT PRIMARY KEY, kind TEXT NOT NULL, key_id TEXT NOT NULL,
    bucket_id TEXT, file_id TEXT, prefix TEXT, expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS buckets (
    bucket_id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, account_id TEXT NOT NULL,
    bucket_type TEXT NOT NULL, info TEXT NOT NULL, cors_rules TEXT NOT NULL,
    lifecycle_rules TEXT NOT NULL, revision INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, file_id TEXT NOT NULL UNIQUE,
    bucket_id TEXT NOT NULL, name TEXT NOT NULL, action TEXT NOT NULL,
    content_type TEXT, sha1 TEXT, size INTEGER NOT NULL, info TEXT NOT NULL,
    upload_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS files_by_name ON files (bucket_id, name, seq);
CREATE TABLE IF NOT EXISTS parts (
    file_id TEXT NOT NULL, part_number INTEGER NOT NULL, size INTEGER NOT NULL,
    sha1 TEXT NOT NULL, upload_ms INTEGER NOT NULL, PRIMARY KEY (file_id, part_number));
"""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Key:
    key_id: str
    secret: str
    name: str
    account_id: str
    capabilities: list[str]
    bucket_ids: list[str] | None
    name_prefix: str | None
    expires_ms: int | None
    is_master: bool

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Key:
        return cls(row["key_id"], row["secret"], row["name"], row["account_id"],
                   json.loads(row["capabilities"]),
                   json.loads(row["bucket_ids"]) if row["bucket_ids"] else None,
                   row["name_prefix"], row["expires_ms"], bool(row["is_master"]))


@dataclass(frozen=True)
class Token:
    token: str
    kind: str  # account | upload | part | download
    key_id: str
    bucket_id: str | None
    file_id: str | None
    prefix: str | None
    expires_ms: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Token:
        return cls(row["token"], row["kind"], row["key_id"], row["bucket_id"], row["file_id"],
                   row["prefix"], row["expires_ms"])


@dataclass(frozen=True)
class Bucket:
    bucket_id: str
    name: str
    account_id: str
    bucket_type: str
    info: dict[str, str]
    cors_rules: list[object]
    lifecycle_rules: list[object]
    revision: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Bucket:
        return cls(row["bucket_id"], row["name"], row["account_id"], row["bucket_type"],
                   json.loads(row["info"]), json.loads(row["cors_rules"]),
                   json.loads(row["lifecycle_rules"]), row["revision"])


@dataclass(frozen=True)
class FileVersion:
    seq: int
    file_id: str
    bucket_id: str
    name: str
    action: str  # upload | hide | start
    content_type: str | None
    sha1: str | None
    size: int
    info: dict[str, str]
    upload_ms: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> FileVersion:
        return cls(row["seq"], row["file_id"], row["bucket_id"], row["name"], row["action"],
                   row["content_type"], row["sha1"], row["size"], json.loads(row["info"]),
                   row["upload_ms"])


@dataclass(frozen=True)
class Part:
    file_id: str
    part_number: int
    size: int
    sha1: str
    upload_ms: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Part:
        return cls(row["file_id"], row["part_number"], row["size"], row["sha1"],
                   row["upload_ms"])


class Store:
    """All persistent state of one emulated B2 account."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.blob_dir = self.state_dir / "blobs"
        self.part_dir = self.state_dir / "parts"
        self.tmp_dir = self.state_dir / "tmp"
        for folder in (self.blob_dir, self.part_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # One connection shared by the server's threads, serialized by a lock: simpler than a
        # pool, and the emulator's load is a handful of clients.
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.state_dir / "b2.sqlite3", check_same_thread=False,
                                   isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._ensure_account()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            # IMMEDIATE so that up() reading the master key from another process never sees
            # an account without its key.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # account and keys -------------------------------------------------------------------

    def _ensure_account(self) -> None:
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM account").fetchone():
                return
            account_id = secrets.token_hex(6)
            db.execute("INSERT INTO account VALUES (?, ?)", (account_id, now_ms()))
            # B2's master key id is the account id padded; its secret is shown once in the UI.
            self._insert_key(db, Key(
                key_id=f"000{account_id}0000000000", secret=_new_secret(), name="master",
                account_id=account_id, capabilities=list(ALL_CAPABILITIES), bucket_ids=None,
                name_prefix=None, expires_ms=None, is_master=True))

    @property
    def account_id(self) -> str:
        return str(self._query("SELECT account_id FROM account")[0]["account_id"])

    def master_key(self) -> Key:
        return Key.from_row(self._query("SELECT * FROM keys WHERE is_master = 1")[0])

    @staticmethod
    def _insert_key(db: sqlite3.Connection, key: Key) -> None:
        db.execute(
            "INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key.key_id, key.secret, key.name, key.account_id, json.dumps(key.capabilities),
             json.dumps(key.bucket_ids) if key.bucket_ids is not None else None,
             key.name_prefix, key.expires_ms, int(key.is_master), now_ms()))

    def create_key(self, name: str, capabilities: list[str], bucket_ids: list[str] | None,
                   name_prefix: str | None, expires_ms: int | None) -> Key:
        key = Key(key_id=f"005{self.account_id}{secrets.token_hex(5)}", secret=_new_secret(),
                  name=name, account_id=self.account_id, capabilities=capabilities,
                  bucket_ids=bucket_ids, name_prefix=name_prefix, expires_ms=expires_ms,
                  is_master=False)
        with self.transaction() as db:
            self._insert_key(db, key)
        return key

    def get_key(self, key_id: str) -> Key | None:
        rows = self._query("SELECT * FROM keys WHERE key_id = ?", (key_id,))
        return Key.from_row(rows[0]) if rows else None

    def list_keys(self) -> list[Key]:
        rows = self._query("SELECT * FROM keys WHERE is_master = 0 ORDER BY key_id")
        return [Key.from_row(r) for r in rows]

    def delete_key(self, key_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM keys WHERE key_id = ?", (key_id,))
            db.execute("DELETE FROM tokens WHERE key_id = ?", (key_id,))

    # tokens -----------------------------------------------------------------------------

    def issue_token(self, kind: str, key_id: str, ttl_s: int, bucket_id: str | None = None,
                    file_id: str | None = None, prefix: str | None = None) -> Token:
        # The digit mimics B2's token prefixes; the key id lets a reader of logs tell keys
        # apart without holding a secret.
        lead = {"account": "4", "upload": "4", "part": "4", "download": "3"}[kind]
        token = Token(f"{lead}_{key_id}_{secrets.token_hex(24)}", kind, key_id, bucket_id,
                      file_id, prefix, now_ms() + ttl_s * 1000)
        with self.transaction() as db:
            # Expired tokens are useless after a grace hour; dropping them here keeps the table
            # from growing with every signed URL ever made.
            db.execute("DELETE FROM tokens WHERE expires_ms < ?", (now_ms() - 3_600_000,))
            db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (token.token, kind, key_id, bucket_id, file_id, prefix, token.expires_ms))
        return token

    def get_token(self, token: str) -> Token | None:
        rows = self._query("SELECT * FROM tokens WHERE token = ?", (token,))
        return Token.from_row(rows[0]) if rows else None

    # buckets ----------------------------------------------------------------------------

    def create_bucket(self, name: str, bucket_type: str, info: dict[str, str],
                      cors_rules: list[object], lifecycle_rules: list[object]) -> Bucket:
        bucket = Bucket(secrets.token_hex(12), name, self.account_id, bucket_type, info,
                        cors_rules, lifecycle_rules, 1)
        with self.transaction() as db:
            db.execute("INSERT INTO buckets VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (bucket.bucket_id, name, bucket.account_id, bucket_type, json.dumps(info),
                        json.dumps(cors_rules), json.dumps(lifecycle_rules), 1))
        return bucket

    def update_bucket(self, bucket: Bucket) -> Bucket:
        with self.transaction() as db:
            db.execute(
                "UPDATE buckets SET bucket_type = ?, info = ?, cors_rules = ?,"
                " lifecycle_rules = ?, revision = ? WHERE bucket_id = ?",
                (bucket.bucket_type, json.dumps(bucket.info), json.dumps(bucket.cors_rules),
                 json.dumps(bucket.lifecycle_rules), bucket.revision, bucket.bucket_id))
        return bucket

    def delete_bucket(self, bucket_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM buckets WHERE bucket_id = ?", (bucket_id,))

    def get_bucket(self, bucket_id: str) -> Bucket | None:
        rows = self._query("SELECT * FROM buckets WHERE bucket_id = ?", (bucket_id,))
        return Bucket.from_row(rows[0]) if rows else None

    def get_bucket_by_name(self, name: str) -> Bucket | None:
        rows = self._query("SELECT * FROM buckets WHERE name = ?", (name,))
        return Bucket.from_row(rows[0]) if rows else None

    def list_buckets(self) -> list[Bucket]:
        return [Bucket.from_row(r) for r in self._query("SELECT * FROM buckets ORDER BY name")]

    # files ------------------------------------------------------------------------------

    def add_file(self, bucket_id: str, name: str, action: str, content_type: str | None,
                 sha1: str | None, size: int, info: dict[str, str],
                 blob: Path | None = None, upload_ms: int | None = None) -> FileVersion:
        """Record a new version; ``blob`` (a temp file) becomes its content atomically."""
        stamp = upload_ms or now_ms()
        file_id = _new_file_id(bucket_id, stamp)
        if blob is not None:
            blob.replace(self.blob_path(file_id))
        with self.transaction() as db:
            db.execute(
                "INSERT INTO files (file_id, bucket_id, name, action, content_type, sha1, size,"
                " info, upload_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (file_id, bucket_id, name, action, content_type, sha1, size, json.dumps(info),
                 stamp))
        found = self.get_file(file_id)
        assert found is not None
        return found

    def finish_large_file(self, file_id: str, blob: Path, size: int) -> FileVersion:
        blob.replace(self.blob_path(file_id))
        with self.transaction() as db:
            db.execute("UPDATE files SET action = 'upload', size = ?, sha1 = 'none'"
                       " WHERE file_id = ?", (size, file_id))
            db.execute("DELETE FROM parts WHERE file_id = ?", (file_id,))
        self._remove_parts(file_id)
        found = self.get_file(file_id)
        assert found is not None
        return found

    def get_file(self, file_id: str) -> FileVersion | None:
        rows = self._query("SELECT * FROM files WHERE file_id = ?", (file_id,))
        return FileVersion.from_row(rows[0]) if rows else None

    def versions(self, bucket_id: str, prefix: str = "", start_name: str = "",
                 actions: tuple[str, ...] = ("upload", "hide", "start")) -> list[FileVersion]:
        """Versions ordered as B2 lists them: by name, newest first within a name."""
        marks = ",".join("?" * len(actions))
        rows = self._query(
            f"SELECT * FROM files WHERE bucket_id = ? AND name >= ? AND action IN ({marks})"
            " AND substr(name, 1, ?) = ? ORDER BY name, seq DESC",
            (bucket_id, start_name, *actions, len(prefix), prefix))
        return [FileVersion.from_row(r) for r in rows]

    def latest_versions(self, bucket_id: str, prefix: str = "",
                        start_name: str = "") -> list[FileVersion]:
        """The newest finished or hidden version of each name (unfinished uploads skipped)."""
        seen: set[str] = set()
        latest = []
        for version in self.versions(bucket_id, prefix, start_name, ("upload", "hide")):
            if version.name not in seen:
                seen.add(version.name)
                latest.append(version)
        return latest

    def count_files(self, bucket_id: str | None = None) -> int:
        if bucket_id is None:
            return int(self._query("SELECT count(*) AS n FROM files")[0]["n"])
        rows = self._query("SELECT count(*) AS n FROM files WHERE bucket_id = ?", (bucket_id,))
        return int(rows[0]["n"])

    def delete_file(self, file_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM files WHERE file_id = ?", (file_id,))
            db.execute("DELETE FROM parts WHERE file_id = ?", (file_id,))
        self.blob_path(file_id).unlink(missing_ok=True)
        self._remove_parts(file_id)

    def blob_path(self, file_id: str) -> Path:
        return self.blob_dir / file_id

    # parts of large files ---------------------------------------------------------------

    def part_path(self, file_id: str, part_number: int) -> Path:
        return self.part_dir / f"{file_id}.{part_number}"

    def put_part(self, file_id: str, part_number: int, size: int, sha1: str, blob: Path) -> Part:
        # A part uploaded twice replaces the first, as in B2.
        blob.replace(self.part_path(file_id, part_number))
        part = Part(file_id, part_number, size, sha1, now_ms())
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?)",
                       (file_id, part_number, size, sha1, part.upload_ms))
        return part

    def parts(self, file_id: str) -> list[Part]:
        rows = self._query("SELECT * FROM parts WHERE file_id = ? ORDER BY part_number",
                           (file_id,))
        return [Part.from_row(r) for r in rows]

    def _remove_parts(self, file_id: str) -> None:
        for path in self.part_dir.glob(f"{file_id}.*"):
            path.unlink(missing_ok=True)

    def temp_path(self) -> Path:
        return self.tmp_dir / secrets.token_hex(8)


def _new_secret() -> str:
    # B2 application keys are 31 characters of base64-ish text.
    return "K005" + secrets.token_urlsafe(20)[:27]


def _new_file_id(bucket_id: str, stamp_ms: int) -> str:
    """An id in B2's layout (4_z<bucket>_f<random>_d<date>_m<time>_c..._v..._t...).

    Nothing parses it; the layout only makes the emulator's ids look like the real ones in
    runbook outputs.
    """
    when = time.gmtime(stamp_ms / 1000)
    return (f"4_z{bucket_id}_f{secrets.token_hex(12)}_d{time.strftime('%Y%m%d', when)}"
            f"_m{time.strftime('%H%M%S', when)}_c005_v0501000_t0004")
