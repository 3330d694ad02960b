"""Records the privacy ledger hands out: entries, reservations and per-data-set summaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedsys.privacy.accounting import Segment


@dataclass(frozen=True)
class LedgerEntry:
    """One reservation (and, once committed, the steps actually run)."""

    id: int
    fingerprint: str
    run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    planned_steps: int
    accountant: str
    target_delta: float
    epsilon_before: float
    epsilon_after: float
    status: Literal["reserved", "committed"]
    reserved_at: str
    committed_at: str | None


@dataclass(frozen=True)
class Reservation:
    """Steps granted by :meth:`PrivacyLedger.reserve_within_budget`.

    ``prior_history`` is the history the budget was checked against (without this
    reservation): restore it into the training accountant.
    """

    entry_id: int
    steps: int
    planned_steps: int
    truncated: bool
    epsilon_before: float
    epsilon_after: float
    prior_history: tuple[Segment, ...]


@dataclass(frozen=True)
class LedgerSummary:
    """Total spend on one data set, evaluated with its latest accountant and delta."""

    fingerprint: str
    entries: int
    steps: int
    open_reservations: int
    epsilon: float
    accountant: str
    target_delta: float
