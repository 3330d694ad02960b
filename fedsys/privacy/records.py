"""Records the privacy ledger hands out: entries, reservations and per-budget summaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedsys.privacy.accounting import AnySegment


@dataclass(frozen=True)
class LedgerEntry:
    """One reservation (and, once committed, the steps actually run).

    ``budget_key`` is the holder's declared data-set name the spend counts against;
    ``fingerprint`` is the data the steps ran on (audit only).
    """

    id: int
    budget_key: str
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
    mechanism: Literal["gaussian", "skellam"] = "gaussian"
    skellam_mu: float | None = None
    skellam_l1: float | None = None
    skellam_l2: float | None = None


@dataclass(frozen=True)
class Reservation:
    """Steps granted by :meth:`PrivacyLedger.reserve_within_budget`.

    ``prior_history`` is the history the budget was checked against (without this
    reservation): restore it into the training accountant. ``data_changed`` says the
    data's fingerprint differs from the budget's previous entry (the spend still counts).
    """

    entry_id: int
    steps: int
    planned_steps: int
    truncated: bool
    epsilon_before: float
    epsilon_after: float
    prior_history: tuple[AnySegment, ...]
    data_changed: bool = False


@dataclass(frozen=True)
class LedgerSummary:
    """Total spend under one budget key, evaluated with its latest accountant and delta.

    ``fingerprints`` counts the distinct data fingerprints recorded under the key: more
    than one means the data changed under the same name (see :attr:`data_changed`).
    """

    budget_key: str
    entries: int
    steps: int
    open_reservations: int
    epsilon: float
    accountant: str
    target_delta: float
    fingerprints: int = 1

    @property
    def data_changed(self) -> bool:
        """Whether the data changed under this budget key."""
        return self.fingerprints > 1
