"""Sample-level DP-SGD for federated clients: settings, accounting, ledger, private round."""

from fedsys.privacy.accounting import compute_epsilon, extend_history, max_steps_within
from fedsys.privacy.dpsgd import choose_grad_sample_mode, plan_steps, sample_rate_for
from fedsys.privacy.fingerprint import fingerprint_dataset
from fedsys.privacy.ledger import DEFAULT_BUDGET_KEY, PrivacyLedger
from fedsys.privacy.records import LedgerEntry, LedgerSummary, Reservation
from fedsys.privacy.round import PrivateRoundResult, run_private_round
from fedsys.privacy.settings import DPSettings, LocalBudget

__all__ = [
    "DEFAULT_BUDGET_KEY",
    "DPSettings",
    "LedgerEntry",
    "LedgerSummary",
    "LocalBudget",
    "PrivacyLedger",
    "PrivateRoundResult",
    "Reservation",
    "choose_grad_sample_mode",
    "compute_epsilon",
    "extend_history",
    "fingerprint_dataset",
    "max_steps_within",
    "plan_steps",
    "run_private_round",
    "sample_rate_for",
]
