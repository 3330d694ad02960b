"""The privacy ledger's SQLite file: opening without creating, explicit creation, schema migration.

A data holder's ledger is created once, on purpose (``fedsys ledger init PATH``). Opening a
ledger never creates one unless the caller says so (simulation's virtual clients do):
a missing, zero-byte, corrupt or foreign file is refused, because silently recreating it
would hand the holder a fresh budget.

Schema versions:

1. entries keyed by ``fingerprint`` (the exact bytes of the data).
2. entries keyed by ``budget_key`` (the holder's declared data-set name); the fingerprint
   is kept per entry, for audit only. Migrating from 1 keeps every entry under
   :data:`LEGACY_BUDGET_KEY`, which counts towards *every* budget of the ledger
   (conservative: the old spend is never lost, whichever name the holder now declares).
3. entries carry a ``mechanism``: ``gaussian`` (local DP-SGD steps, ``noise_multiplier``,
   ``sample_rate``, ``steps``) or ``skellam`` (distributed-DP rounds, which also record the
   aggregate Skellam parameter and the integer sensitivities ``skellam_mu``, ``skellam_l1``,
   ``skellam_l2``; their ``noise_multiplier`` is the aggregate's Gaussian-equivalent one, for
   display). Migrating from 2 marks every entry ``gaussian``.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from fedsys.errors import ConfigError, LedgerError

SCHEMA_VERSION = 3
DEFAULT_BUDGET_KEY = "default"
LEGACY_BUDGET_KEY = "(schema-1)"  # not a valid data-set name, so it cannot be declared
COLUMNS = (
    "id, budget_key, fingerprint, run_id, round, noise_multiplier, sample_rate, steps, planned_steps, "
    "accountant, target_delta, epsilon_before, epsilon_after, status, reserved_at, committed_at, "
    "mechanism, skellam_mu, skellam_l1, skellam_l2"
)
_V2_COLUMNS = COLUMNS.removesuffix(", mechanism, skellam_mu, skellam_l1, skellam_l2")
_TABLE = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    budget_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    noise_multiplier REAL NOT NULL CHECK (noise_multiplier > 0),
    sample_rate REAL NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
    steps INTEGER NOT NULL CHECK (steps >= 0),
    planned_steps INTEGER NOT NULL CHECK (planned_steps >= steps),
    accountant TEXT NOT NULL,
    target_delta REAL NOT NULL,
    epsilon_before REAL NOT NULL,
    epsilon_after REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'committed')),
    reserved_at TEXT NOT NULL,
    committed_at TEXT,
    mechanism TEXT NOT NULL DEFAULT 'gaussian' CHECK (mechanism IN ('gaussian', 'skellam')),
    skellam_mu REAL CHECK (skellam_mu > 0),
    skellam_l1 REAL CHECK (skellam_l1 > 0),
    skellam_l2 REAL CHECK (skellam_l2 > 0),
    CHECK (
        (mechanism = 'gaussian' AND skellam_mu IS NULL AND skellam_l1 IS NULL AND skellam_l2 IS NULL)
        OR (mechanism = 'skellam' AND skellam_mu IS NOT NULL AND skellam_l1 IS NOT NULL
            AND skellam_l2 IS NOT NULL)
    )
)"""
_INDEX = "CREATE INDEX entries_by_budget ON entries (budget_key, id)"
_V1_COLUMNS = (
    "id, fingerprint, run_id, round, noise_multiplier, sample_rate, steps, planned_steps, "
    "accountant, target_delta, epsilon_before, epsilon_after, status, reserved_at, committed_at"
)
_BUDGET_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_budget_key(name: str) -> str:
    """Validate a declared data-set name (the key a budget is kept under).

    Raises:
        ConfigError: not 1-64 characters of letters, digits, ``.``, ``_``, ``-`` (first
            a letter or digit).
    """
    if not isinstance(name, str) or not _BUDGET_KEY_RE.match(name):
        raise ConfigError(
            f"dataset-name must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter "
            f"or digit), got {name!r}"
        )
    return name


def init_hint(path: Path) -> str:
    """What a holder reads when its ledger is refused."""
    return (
        f"if this really is a new data holder, create the ledger once with `fedsys ledger init {path}`; "
        "otherwise restore it from a backup (a new ledger starts the budget from zero)"
    )


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """Open the SQLite file; without ``create`` a missing file is refused, never made.

    Raises:
        LedgerError: missing (without ``create``) or unopenable.
    """
    if not create and not path.is_file():
        raise LedgerError(f"privacy ledger {path} does not exist; {init_hint(path)}")
    mode = "rwc" if create else "rw"
    try:
        return sqlite3.connect(
            f"file:{path.resolve().as_posix()}?mode={mode}", timeout=60.0, isolation_level=None, uri=True
        )
    except sqlite3.Error as err:
        raise LedgerError(f"privacy ledger {path} cannot be opened: {err}; {init_hint(path)}") from err


def create_empty_file(target: Path) -> Path:
    """Create ``target`` (and its folder) exclusively: an existing file, even empty, is refused.

    Raises:
        LedgerError: something exists at ``target`` or it cannot be created.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as err:
        raise LedgerError(
            f"{target} already exists; `ledger init` never replaces a ledger (its spend would be "
            "lost). Check it with `fedsys ledger show`; if it is really not needed, move it away first"
        ) from err
    except OSError as err:
        raise LedgerError(f"privacy ledger {target} cannot be created: {err}") from err
    os.close(fd)
    return target


def prepare(conn: sqlite3.Connection, path: Path, *, create: bool) -> None:
    """Check, create (only with ``create``) or migrate the schema; call inside ``BEGIN IMMEDIATE``.

    The caller adds :func:`init_hint` to the error.

    Raises:
        LedgerError: corrupt, empty without ``create``, foreign, or of an unknown version.
    """
    check = conn.execute("PRAGMA quick_check").fetchone()
    if check is None or check[0] != "ok":
        raise LedgerError(f"privacy ledger {path} is corrupt: {check}")
    # fedsys never makes triggers or views; one planted by whoever can write the file could
    # delete or hide committed spending while every check above still passes.
    planted = conn.execute(
        "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')"
    ).fetchall()
    if planted:
        raise LedgerError(f"privacy ledger {path} holds objects fedsys never creates {planted}: refusing it")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if version == 0 and tables == 0:
        if not create:
            raise LedgerError(f"privacy ledger {path} is empty, not a ledger")
        _create(conn)
    elif version == 1:
        _migrate_from_v1(conn)
        _migrate_from_v2(conn)
    elif version == 2:
        _migrate_from_v2(conn)
    elif version != SCHEMA_VERSION:
        raise LedgerError(f"privacy ledger {path} has schema version {version}, expected {SCHEMA_VERSION}")
    conn.execute(f"SELECT {COLUMNS} FROM entries LIMIT 0")


def _create(conn: sqlite3.Connection) -> None:
    conn.execute(_TABLE.format(name="entries"))
    conn.execute(_INDEX)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _migrate_from_v1(conn: sqlite3.Connection) -> None:
    """Re-key every version-1 entry to :data:`LEGACY_BUDGET_KEY`, keeping ids and order."""
    conn.execute(_TABLE.format(name="entries_v2"))
    conn.execute(
        f"INSERT INTO entries_v2 ({_V2_COLUMNS}) SELECT id, ?, {_V1_COLUMNS.removeprefix('id, ')} "
        "FROM entries ORDER BY id",
        (LEGACY_BUDGET_KEY,),
    )
    conn.execute("DROP TABLE entries")
    conn.execute("ALTER TABLE entries_v2 RENAME TO entries")
    conn.execute("PRAGMA user_version = 2")


def _migrate_from_v2(conn: sqlite3.Connection) -> None:
    """Mark every version-2 entry ``gaussian`` (all were local DP-SGD), keeping ids and order."""
    conn.execute(_TABLE.format(name="entries_v3"))
    conn.execute(f"INSERT INTO entries_v3 ({_V2_COLUMNS}) SELECT {_V2_COLUMNS} FROM entries ORDER BY id")
    conn.execute("DROP TABLE entries")
    conn.execute("ALTER TABLE entries_v3 RENAME TO entries")
    conn.execute(_INDEX)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
