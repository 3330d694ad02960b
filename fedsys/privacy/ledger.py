"""The data holder's privacy ledger: a write-ahead SQLite record of every DP-SGD step.

The ledger is owned by the client. Spend is kept under a *budget key*: the name the holder
declares for its data set (node config ``dataset-name``, one budget per holder by default),
so it accumulates across rounds, restarts, separate runs and any re-encoding of the data.
Each entry also records a fingerprint of the data it was reserved for, for audit only:
when the data changes under the same name a warning is logged and shown by
``fedsys ledger show``, but the budget is never reset. ``history(budget_key)`` rebuilt from
the entries equals the history of one Opacus accountant that ran every step.

Guarantees and assumptions:

- Explicit creation: a ledger is created once (``fedsys ledger init``); opening a missing,
  empty, corrupt or foreign file is refused unless the caller asks to create it
  (simulation only), see :mod:`fedsys.privacy.ledger_schema`.
- Write-ahead: steps are reserved (and the budget checked) before any data is read. The
  history is read, epsilon computed with no lock held (it can take tens of seconds with
  PRV), then, in one ``BEGIN IMMEDIATE`` transaction, the history is read again and the
  reservation inserted only if it is unchanged; otherwise the decision is made again. So
  two processes cannot both pass the check, and a slow check never blocks other writers.
- Fail closed: a reservation that is never committed (the process died, training
  raised) counts as spent with its planned steps.
- Mixed accountants and deltas: entries record the accountant and delta used at the
  time, for audit only. Epsilon is never summed across entries; the whole history is
  re-evaluated with the accountant and delta of the budget being checked.
- Anyone who can write the ledger file can still delete rows: the ledger protects against
  accidental resets and re-shaped data, not against its owner.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from fedsys.errors import BudgetExceededError, ConfigError, LedgerError
from fedsys.privacy.accounting import (
    AnySegment,
    append_segment,
    compute_epsilon,
    extend_history,
    normalize_history,
)
from fedsys.privacy.budget import budget_epsilon, grant_steps
from fedsys.privacy.fingerprint import fingerprint_dataset
from fedsys.privacy.ledger_schema import (
    COLUMNS,
    DEFAULT_BUDGET_KEY,
    LEGACY_BUDGET_KEY,
    check_budget_key,
    connect,
    create_empty_file,
    init_hint,
    prepare,
)
from fedsys.privacy.records import LedgerEntry, LedgerSummary, Reservation
from fedsys.privacy.settings import LocalBudget

if TYPE_CHECKING:
    from fedsys.privacy.distributed import SkellamSegment

__all__ = [
    "DEFAULT_BUDGET_KEY",
    "LEGACY_BUDGET_KEY",
    "LedgerEntry",
    "LedgerSummary",
    "PrivacyLedger",
    "Reservation",
    "fingerprint_dataset",
]

log = logging.getLogger("fedsys")
_ATTEMPTS = 8  # re-decisions after a concurrent writer changed the history


@dataclass(frozen=True)
class _Request:
    budget_key: str
    fingerprint: str
    run_id: str
    server_round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    skellam: SkellamSegment | None = None  # a distributed-DP round instead of Gaussian steps


@dataclass(frozen=True)
class _Decision:
    granted: int
    epsilon_before: float
    epsilon_after: float


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps to reserve must be an integer >= 1, got {steps!r}")


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _decide(prior: list[AnySegment], request: _Request, budget: LocalBudget, *, enforce: bool) -> _Decision:
    """The slow part (epsilon over the whole history): run with no lock held."""
    if request.skellam is not None:  # one round of distributed DP: all or nothing
        after = append_segment(prior, request.skellam)
        before_epsilon, after_epsilon = budget_epsilon(prior, budget), budget_epsilon(after, budget)
        if enforce and after_epsilon > budget.max_epsilon:
            raise BudgetExceededError(
                f"a distributed-DP round would reach epsilon {after_epsilon:.4g} > budget "
                f"{budget.max_epsilon:g} (already spent {before_epsilon:.4g})"
            )
        return _Decision(request.steps, before_epsilon, after_epsilon)
    granted = request.steps
    if enforce:
        granted = grant_steps(
            prior,
            noise_multiplier=request.noise_multiplier,
            sample_rate=request.sample_rate,
            steps=request.steps,
            budget=budget,
        )
    after = extend_history(
        prior, noise_multiplier=request.noise_multiplier, sample_rate=request.sample_rate, steps=granted
    )
    return _Decision(granted, budget_epsilon(prior, budget), budget_epsilon(after, budget))


class PrivacyLedger:
    """SQLite-backed, write-ahead privacy ledger (see the module docstring).

    One instance per thread (a SQLite connection is not shared across threads); any
    number of processes may open the same file.

    Args:
        path: The SQLite file.
        create: Create the file (or an empty one's schema) if missing. Only simulation's
            virtual clients do this; a real holder runs :meth:`init` once.

    Raises:
        LedgerError: the file is missing or empty (without ``create``), cannot be opened,
            is not a ledger or is corrupt.
    """

    def __init__(self, path: str | PathLike[str], *, create: bool = False) -> None:
        self.path = Path(path)
        self._conn = connect(self.path, create=create)
        try:
            with self._transaction() as conn:
                prepare(conn, self.path, create=create)
        except LedgerError as err:
            self._conn.close()
            raise LedgerError(f"{err}; {init_hint(self.path)}") from err
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def open(cls, path: str | PathLike[str], *, create: bool = False) -> PrivacyLedger:
        """Open a ledger; refuse a missing, empty, corrupt or foreign file unless ``create``."""
        return cls(path, create=create)

    @classmethod
    def init(cls, path: str | PathLike[str]) -> Path:
        """Create a new, empty ledger (``fedsys ledger init``); never replaces an existing file.

        Returns:
            The ledger's path.

        Raises:
            LedgerError: something (even an empty file) already exists at ``path``.
        """
        target = create_empty_file(Path(path))
        cls(target, create=True).close()
        return target

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
    def _transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` (take the write lock before reading) or a plain read snapshot."""
        try:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
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

    def _segments(self, conn: sqlite3.Connection, *keys: str) -> list[AnySegment]:
        marks = ", ".join("?" * len(keys))
        rows = conn.execute(
            "SELECT noise_multiplier, sample_rate, steps, mechanism, skellam_mu, skellam_l1, skellam_l2 "
            f"FROM entries WHERE budget_key IN ({marks}) ORDER BY id",
            keys,
        ).fetchall()
        try:
            segments: list[AnySegment] = []
            if any(row[3] == "skellam" for row in rows):
                from fedsys.privacy.distributed import SkellamSegment
            for noise, rate, steps, mechanism, mu, l1, l2 in rows:
                if mechanism == "skellam":
                    segments.append(
                        SkellamSegment(
                            mu=float(mu),
                            l1=float(l1),
                            l2=float(l2),
                            sample_rate=float(rate),
                            steps=int(steps),
                        )
                    )
                else:
                    segments.append((float(noise), float(rate), int(steps)))
            return normalize_history(segments)
        except (ConfigError, TypeError, ValueError) as err:
            raise LedgerError(f"privacy ledger {self.path} is inconsistent: {err}") from err

    def _history(self, conn: sqlite3.Connection, budget_key: str) -> list[AnySegment]:
        return self._segments(conn, budget_key, LEGACY_BUDGET_KEY)

    def _last_fingerprint(self, conn: sqlite3.Connection, budget_key: str) -> str | None:
        row = conn.execute(
            "SELECT fingerprint FROM entries WHERE budget_key IN (?, ?) ORDER BY id DESC LIMIT 1",
            (budget_key, LEGACY_BUDGET_KEY),
        ).fetchone()
        return None if row is None else str(row[0])

    def history(self, budget_key: str) -> list[AnySegment]:
        """Accountant history of a budget: its entries and any migrated from schema 1, merged.

        Open reservations count with their planned steps (fail closed).
        """
        with self._transaction(write=False) as conn:
            return self._history(conn, budget_key)

    def entries(self, budget_key: str) -> list[LedgerEntry]:
        """All entries recorded under exactly this budget key, oldest first."""
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM entries WHERE budget_key = ? ORDER BY id", (budget_key,)
            ).fetchall()
        return [LedgerEntry(*row) for row in rows]

    def reserve(
        self,
        *,
        budget_key: str,
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
        request = _Request(
            budget_key, fingerprint, run_id, server_round, noise_multiplier, sample_rate, steps
        )
        return self._reserve(request, budget, enforce=False)

    def reserve_within_budget(
        self,
        *,
        budget_key: str,
        fingerprint: str,
        run_id: str,
        server_round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        budget: LocalBudget,
    ) -> Reservation:
        """Check the budget and reserve steps, atomically with respect to other writers.

        Epsilon is evaluated over the whole history with ``budget.accountant`` at
        ``budget.target_delta``, whatever earlier entries used, without holding the write
        lock; the reservation is inserted only if the history is still the one checked.

        Args:
            budget_key: The holder's declared data-set name: the budget spend is kept under.
            fingerprint: The data's current fingerprint (audit: a change is warned about).
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
            LedgerError: the ledger is unreadable, or kept changing under every attempt.
        """
        request = _Request(
            budget_key, fingerprint, run_id, server_round, noise_multiplier, sample_rate, steps
        )
        return self._reserve(request, budget, enforce=True)

    def reserve_distributed_round(
        self,
        *,
        budget_key: str,
        fingerprint: str,
        run_id: str,
        server_round: int,
        segment: SkellamSegment,
        budget: LocalBudget,
    ) -> Reservation:
        """Check the budget and reserve one distributed-DP round (all or nothing).

        The segment's ``mu`` is the Skellam parameter of the noise the *aggregate* carries
        (what this holder relies on), not its own share; see :mod:`fedsys.privacy.distributed`.

        Raises:
            BudgetExceededError: the round does not fit, whatever the budget's policy (a
                round cannot be truncated).
            ConfigError, LedgerError: as for :meth:`reserve_within_budget`.
        """
        noise = math.sqrt(2.0 * segment.mu) / segment.l2  # the Gaussian-equivalent multiplier, display only
        request = _Request(
            budget_key, fingerprint, run_id, server_round, noise, segment.sample_rate, segment.steps, segment
        )
        return self._reserve(request, budget, enforce=True)

    def _reserve(self, request: _Request, budget: LocalBudget, *, enforce: bool) -> Reservation:
        _check_steps(request.steps)
        check_budget_key(request.budget_key)
        for _ in range(_ATTEMPTS):
            with self._transaction(write=False) as conn:
                prior = self._history(conn, request.budget_key)
                last_fingerprint = self._last_fingerprint(conn, request.budget_key)
            decision = _decide(prior, request, budget, enforce=enforce)
            with self._transaction() as conn:
                if self._history(conn, request.budget_key) != prior:
                    continue  # another writer spent meanwhile: decide again on the new history
                entry_id = self._insert(conn, request, decision, budget)
            changed = last_fingerprint is not None and last_fingerprint != request.fingerprint
            if changed:
                log.warning(
                    "data set %r changed since its last ledger entry (fingerprint %s... now %s...); "
                    "its earlier spend still counts against the same budget",
                    request.budget_key,
                    str(last_fingerprint)[:12],
                    request.fingerprint[:12],
                )
            return Reservation(
                entry_id=entry_id,
                steps=decision.granted,
                planned_steps=request.steps,
                truncated=decision.granted < request.steps,
                epsilon_before=decision.epsilon_before,
                epsilon_after=decision.epsilon_after,
                prior_history=tuple(prior),
                data_changed=changed,
            )
        raise LedgerError(
            f"privacy ledger {self.path} changed under each of {_ATTEMPTS} reservation attempts; none made"
        )

    def _insert(
        self, conn: sqlite3.Connection, request: _Request, decision: _Decision, budget: LocalBudget
    ) -> int:
        skellam = request.skellam
        cursor = conn.execute(
            "INSERT INTO entries (budget_key, fingerprint, run_id, round, noise_multiplier, sample_rate, "
            "steps, planned_steps, accountant, target_delta, epsilon_before, epsilon_after, "
            "status, reserved_at, mechanism, skellam_mu, skellam_l1, skellam_l2) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?, ?)",
            (
                request.budget_key,
                request.fingerprint,
                request.run_id,
                request.server_round,
                request.noise_multiplier,
                request.sample_rate,
                decision.granted,
                request.steps,
                budget.accountant,
                budget.target_delta,
                decision.epsilon_before,
                decision.epsilon_after,
                _now(),
                "gaussian" if skellam is None else "skellam",
                None if skellam is None else skellam.mu,
                None if skellam is None else skellam.l1,
                None if skellam is None else skellam.l2,
            ),
        )
        if cursor.lastrowid is None:
            raise LedgerError(f"privacy ledger {self.path} did not record the reservation")
        return cursor.lastrowid

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
        """Total spend per budget key, each evaluated with its latest accountant and delta.

        A budget's total includes entries migrated from schema 1 (which also have their own
        row under :data:`LEGACY_BUDGET_KEY`). Epsilon is computed after the read, unlocked.
        """
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT budget_key, count(*), sum(steps), sum(status = 'reserved'), "
                "count(DISTINCT fingerprint), max(id) FROM entries GROUP BY budget_key ORDER BY budget_key"
            ).fetchall()
            read = []
            for key, count, steps, open_count, fingerprints, last_id in rows:
                accountant, delta = conn.execute(
                    "SELECT accountant, target_delta FROM entries WHERE id = ?", (last_id,)
                ).fetchone()
                history = self._segments(conn, key) if key == LEGACY_BUDGET_KEY else self._history(conn, key)
                read.append((key, count, steps, open_count, fingerprints, accountant, delta, history))
        result = []
        for key, count, steps, open_count, fingerprints, accountant, delta, history in read:
            try:
                epsilon = compute_epsilon(history, target_delta=delta, accountant=accountant)
            except ConfigError as err:
                raise LedgerError(f"privacy ledger {self.path} is inconsistent: {err}") from err
            result.append(
                LedgerSummary(key, count, steps, open_count, epsilon, accountant, delta, fingerprints)
            )
        return result
