"""The data holder's privacy ledger: a write-ahead SQLite record of every DP-SGD step.

The ledger is owned by the client and keyed by a fingerprint of the data set, so spend
accumulates across rounds, restarts and separate runs on the same data. It *is* the
accountant history: ``history(fingerprint)`` rebuilt from the entries equals the history
of one Opacus accountant that ran every step.

Guarantees and assumptions:

- Write-ahead: steps are reserved (and the budget checked) in one ``BEGIN IMMEDIATE``
  transaction before any data is read, so two processes cannot both pass the check.
- Fail closed: a reservation that is never committed (the process died, training
  raised) counts as spent with its planned steps.
- Mixed accountants and deltas: entries record the accountant and delta used at the
  time, for audit only. Epsilon is never summed across entries; the whole history is
  re-evaluated with the accountant and delta of the budget being checked.
- The fingerprint covers the exact bytes: a reordered or re-encoded copy of the same
  records gets a fresh budget. The data holder must keep one canonical copy.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from types import TracebackType

from fedsys.errors import ConfigError, LedgerError
from fedsys.privacy.accounting import Segment, compute_epsilon, extend_history, normalize_history
from fedsys.privacy.budget import budget_epsilon, grant_steps
from fedsys.privacy.fingerprint import fingerprint_dataset
from fedsys.privacy.records import LedgerEntry, LedgerSummary, Reservation
from fedsys.privacy.settings import LocalBudget

__all__ = [
    "LedgerEntry",
    "LedgerSummary",
    "PrivacyLedger",
    "Reservation",
    "fingerprint_dataset",
]

_SCHEMA_VERSION = 1
_COLUMNS = (
    "id, fingerprint, run_id, round, noise_multiplier, sample_rate, steps, planned_steps, "
    "accountant, target_delta, epsilon_before, epsilon_after, status, reserved_at, committed_at"
)
_SCHEMA = """
CREATE TABLE entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
    committed_at TEXT
);
CREATE INDEX entries_by_fingerprint ON entries (fingerprint, id);
"""


@dataclass(frozen=True)
class _Request:
    fingerprint: str
    run_id: str
    server_round: int
    noise_multiplier: float
    sample_rate: float
    steps: int


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps to reserve must be an integer >= 1, got {steps!r}")


def _now() -> str:
    return datetime.now(UTC).isoformat()


class PrivacyLedger:
    """SQLite-backed, write-ahead privacy ledger (see the module docstring).

    One instance per thread (a SQLite connection is not shared across threads); any
    number of processes may open the same file.

    Args:
        path: The SQLite file; created if missing.

    Raises:
        LedgerError: the file cannot be opened, is not a ledger or is corrupt.
    """

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        except sqlite3.Error as err:
            raise LedgerError(f"privacy ledger {self.path} cannot be opened: {err}") from err
        try:
            self._open_schema()
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        """Close the underlying connection."""
        self._conn.close()

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE``: take the write lock before reading, so check+insert is atomic."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise LedgerError(f"privacy ledger {self.path} is unreadable or locked: {err}") from err
        try:
            yield self._conn
        except sqlite3.Error as err:
            self._conn.execute("ROLLBACK")
            raise LedgerError(f"privacy ledger {self.path} is unreadable: {err}") from err
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as err:
            raise LedgerError(f"privacy ledger {self.path} cannot be written: {err}") from err

    def _open_schema(self) -> None:
        with self._transaction() as conn:
            check = conn.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise LedgerError(f"privacy ledger {self.path} is corrupt: {check}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if version == 0 and tables == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            elif version != _SCHEMA_VERSION:
                raise LedgerError(
                    f"privacy ledger {self.path} has schema version {version}, expected {_SCHEMA_VERSION}"
                )
            conn.execute(f"SELECT {_COLUMNS} FROM entries LIMIT 0")

    def _history(self, conn: sqlite3.Connection, fingerprint: str) -> list[Segment]:
        rows = conn.execute(
            "SELECT noise_multiplier, sample_rate, steps FROM entries WHERE fingerprint = ? ORDER BY id",
            (fingerprint,),
        ).fetchall()
        try:
            return normalize_history([(float(n), float(q), int(s)) for n, q, s in rows])
        except (ConfigError, TypeError, ValueError) as err:
            raise LedgerError(f"privacy ledger {self.path} is inconsistent: {err}") from err

    def history(self, fingerprint: str) -> list[Segment]:
        """Accountant history of a data set: all committed and reserved entries, merged.

        Open reservations count with their planned steps (fail closed).
        """
        with self._transaction() as conn:
            return self._history(conn, fingerprint)

    def entries(self, fingerprint: str) -> list[LedgerEntry]:
        """All entries of a data set, oldest first."""
        with self._transaction() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE fingerprint = ? ORDER BY id",
                (fingerprint,),
            ).fetchall()
        return [LedgerEntry(*row) for row in rows]

    def reserve(
        self,
        *,
        fingerprint: str,
        run_id: str,
        server_round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        budget: LocalBudget,
    ) -> Reservation:
        """Record planned steps before any data is touched, WITHOUT a budget check.

        Epsilon before/after is recorded with the budget's accountant and delta, but the
        budget is not enforced: use :meth:`reserve_within_budget` for that.

        Returns:
            The reservation; pass its ``entry_id`` to :meth:`commit`.
        """
        request = _Request(fingerprint, run_id, server_round, noise_multiplier, sample_rate, steps)
        return self._reserve(request, budget, enforce=False)

    def reserve_within_budget(
        self,
        *,
        fingerprint: str,
        run_id: str,
        server_round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        budget: LocalBudget,
    ) -> Reservation:
        """Check the budget and reserve steps in one ``BEGIN IMMEDIATE`` transaction.

        Epsilon is evaluated over the whole history with ``budget.accountant`` at
        ``budget.target_delta``, whatever earlier entries used.

        Args:
            fingerprint: The data set's fingerprint.
            run_id: Identifier of the federated run (audit only).
            server_round: Round number (audit only).
            noise_multiplier: Noise multiplier of the planned steps.
            sample_rate: Poisson sampling rate of the planned steps.
            steps: Planned number of steps, >= 1.
            budget: The data holder's budget.

        Returns:
            The reservation; ``steps`` may be smaller than planned under ``truncate``.

        Raises:
            BudgetExceededError: the planned steps do not fit (``refuse``), or no step fits.
            ConfigError: a parameter is out of range.
            LedgerError: the ledger is unreadable.
        """
        request = _Request(fingerprint, run_id, server_round, noise_multiplier, sample_rate, steps)
        return self._reserve(request, budget, enforce=True)

    def _reserve(self, request: _Request, budget: LocalBudget, *, enforce: bool) -> Reservation:
        _check_steps(request.steps)
        with self._transaction() as conn:
            prior = self._history(conn, request.fingerprint)
            granted = request.steps
            if enforce:
                granted = grant_steps(
                    prior,
                    noise_multiplier=request.noise_multiplier,
                    sample_rate=request.sample_rate,
                    steps=request.steps,
                    budget=budget,
                )
            return self._insert(conn, prior, request, granted=granted, budget=budget)

    def _insert(
        self,
        conn: sqlite3.Connection,
        prior: list[Segment],
        request: _Request,
        *,
        granted: int,
        budget: LocalBudget,
    ) -> Reservation:
        noise_multiplier, sample_rate = request.noise_multiplier, request.sample_rate
        after = extend_history(
            prior, noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=granted
        )
        epsilon_before, epsilon_after = budget_epsilon(prior, budget), budget_epsilon(after, budget)
        cursor = conn.execute(
            "INSERT INTO entries (fingerprint, run_id, round, noise_multiplier, sample_rate, "
            "steps, planned_steps, accountant, target_delta, epsilon_before, epsilon_after, "
            "status, reserved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?)",
            (
                request.fingerprint,
                request.run_id,
                request.server_round,
                noise_multiplier,
                sample_rate,
                granted,
                request.steps,
                budget.accountant,
                budget.target_delta,
                epsilon_before,
                epsilon_after,
                _now(),
            ),
        )
        if cursor.lastrowid is None:
            raise LedgerError(f"privacy ledger {self.path} did not record the reservation")
        return Reservation(
            entry_id=cursor.lastrowid,
            steps=granted,
            planned_steps=request.steps,
            truncated=granted < request.steps,
            epsilon_before=epsilon_before,
            epsilon_after=epsilon_after,
            prior_history=tuple(prior),
        )

    def commit(self, entry_id: int, *, actual_steps: int, epsilon_after: float) -> None:
        """Mark a reservation as done, recording the steps actually run.

        Args:
            entry_id: The id returned when reserving.
            actual_steps: Steps run, between 0 and the reserved steps.
            epsilon_after: Cumulative epsilon after this entry (audit only).

        Raises:
            LedgerError: unknown entry, already committed, or more steps than reserved.
        """
        with self._transaction() as conn:
            row = conn.execute("SELECT status, steps FROM entries WHERE id = ?", (entry_id,)).fetchone()
            if row is None:
                raise LedgerError(f"privacy ledger {self.path} has no entry {entry_id}")
            status, reserved = row
            if status != "reserved":
                raise LedgerError(f"ledger entry {entry_id} is already {status}")
            if not (0 <= actual_steps <= reserved):
                raise LedgerError(
                    f"ledger entry {entry_id} reserved {reserved} steps, cannot commit {actual_steps}"
                )
            conn.execute(
                "UPDATE entries SET steps = ?, epsilon_after = ?, status = 'committed', "
                "committed_at = ? WHERE id = ?",
                (actual_steps, epsilon_after, _now(), entry_id),
            )

    def summary(self) -> list[LedgerSummary]:
        """Total spend per data set, each evaluated with its latest accountant and delta."""
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT fingerprint, count(*), sum(steps), sum(status = 'reserved'), "
                "max(id) FROM entries GROUP BY fingerprint ORDER BY fingerprint"
            ).fetchall()
            result = []
            for fingerprint, count, steps, open_count, last_id in rows:
                accountant, delta = conn.execute(
                    "SELECT accountant, target_delta FROM entries WHERE id = ?", (last_id,)
                ).fetchone()
                try:
                    history = self._history(conn, fingerprint)
                    epsilon = compute_epsilon(history, target_delta=delta, accountant=accountant)
                except ConfigError as err:
                    raise LedgerError(f"privacy ledger {self.path} is inconsistent: {err}") from err
                result.append(
                    LedgerSummary(fingerprint, count, steps, open_count, epsilon, accountant, delta)
                )
        return result
