"""Versioned schema migrations for the order database.

Plain SQL files in `migrations/NNNN_name.sql` beside this module (package data), applied in
order, each in its own transaction, recorded in `nontax.schema_version` with a checksum.
Applying twice is a no-op.
A database with a newer version than these files know is refused, and so is an applied file
that has since been edited: both mean this checkout is not the code that owns the schema.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg2

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any fixed number: every migrator takes the same transaction-level lock, one at a time.
_LOCK_KEY = 0x6E6F6E746178  # "nontax"


class MigrationError(RuntimeError):
    """The database's schema cannot be brought to this checkout's version."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def known_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration versions must run 1, 2, 3... without gaps: {versions}")
    return found


def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Bring the database at `dsn` up to date; returns the versions applied now."""
    migrations = known_migrations(directory)
    conn = psycopg2.connect(dsn, application_name="nontax-migrate")
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            cur.execute(
                """
                CREATE SCHEMA IF NOT EXISTS nontax;
                CREATE TABLE IF NOT EXISTS nontax.schema_version (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            cur.execute("SELECT version, name, checksum FROM nontax.schema_version ORDER BY 1")
            applied = {version: (name, checksum) for version, name, checksum in cur.fetchall()}
            _refuse_foreign_schema(applied, migrations)
            done = []
            for migration in migrations:
                if migration.version in applied:
                    continue
                cur.execute(migration.sql)
                cur.execute(
                    "INSERT INTO nontax.schema_version (version, name, checksum) "
                    "VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
                done.append(migration.version)
            return done
    finally:
        conn.close()


def current_version(dsn: str) -> int:
    conn = psycopg2.connect(dsn, application_name="nontax-migrate")
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass('nontax.schema_version') IS NOT NULL")
            if not cur.fetchone()[0]:
                return 0
            cur.execute("SELECT coalesce(max(version), 0) FROM nontax.schema_version")
            return cur.fetchone()[0]
    finally:
        conn.close()


def _refuse_foreign_schema(applied: dict[int, tuple[str, str]], known: list[Migration]) -> None:
    newest_known = known[-1].version if known else 0
    newer = sorted(v for v in applied if v > newest_known)
    if newer:
        raise MigrationError(
            f"the order database is at schema version {max(newer)}, newer than this checkout "
            f"knows ({newest_known}): upgrade the pipeline's code before running it against it"
        )
    for migration in known:
        if migration.version in applied and applied[migration.version][1] != migration.checksum:
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name} was edited after it was "
                "applied: add a new migration instead of changing an applied one"
            )
