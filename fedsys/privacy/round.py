"""The client-side private round: plan, reserve within the local budget, train, commit.

This is the only entry point a ClientApp needs. Order matters for privacy:

1. Plan the steps from public quantities (``len(train_set)``, batch size, epochs).
2. Check the budget and reserve the steps in the ledger in one transaction (write-ahead)
   BEFORE any example is read. The budget comes only from the data holder's
   :class:`LocalBudget`; the server's DP request cannot raise it.
3. Train with DP-SGD, the Opacus accountant restored from the ledger history.
4. Commit the steps actually run. If training raises, the reservation is left in place
   and keeps counting with its planned steps (fail closed).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedsys.errors import ConfigError, LedgerError
from fedsys.privacy.accounting import extend_history, gaussian_part
from fedsys.privacy.budget import budget_epsilon, delta_warning
from fedsys.privacy.dpsgd import (
    LocalTrainingResult,
    TrainingMode,
    check_model,
    choose_grad_sample_mode,
    plan_steps,
    sample_rate_for,
    train_dp_sgd,
)
from fedsys.privacy.ledger import PrivacyLedger, Reservation
from fedsys.privacy.settings import DPSettings, LocalBudget

log = logging.getLogger("fedsys")


@dataclass(frozen=True)
class PrivateRoundResult:
    """What a private round produced.

    Attributes:
        state_dict: Trained weights, plain keys, on CPU.
        steps: DP-SGD steps run (and committed to the ledger).
        planned_steps: Steps the round asked for.
        truncated: Whether the budget cut the round short (policy ``truncate``).
        epsilon_before: Epsilon spent on this data set before the round.
        epsilon_after: Epsilon after this round (budget's accountant and delta).
        train_loss: Mean training loss; computed on private data WITHOUT noise, so it is
            not covered by the DP guarantee and should not leave the data holder.
        num_examples: Size of the training set (treated as public).
        grad_sample_mode: ``hooks`` or ``ghost``.
    """

    state_dict: dict[str, torch.Tensor]
    steps: int
    planned_steps: int
    truncated: bool
    epsilon_before: float
    epsilon_after: float
    train_loss: float
    num_examples: int
    grad_sample_mode: TrainingMode


def _check_hyperparameters(*, lr: float, momentum: float, proximal_mu: float) -> None:
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"train.lr must be a finite number > 0, got {lr!r}")
    if not (0 <= momentum < 1):
        raise ConfigError(f"train.momentum must be in [0, 1), got {momentum!r}")
    if not (math.isfinite(proximal_mu) and proximal_mu >= 0):
        raise ConfigError(f"train.proximal-mu must be >= 0, got {proximal_mu!r}")
    if lr * proximal_mu > 1:
        raise ConfigError(
            f"train.lr * train.proximal-mu must be <= 1 (the proximal step would "
            f"overshoot the global weights), got {lr} * {proximal_mu}"
        )


def run_private_round(
    *,
    model: nn.Module,
    train_set: TensorDataset,
    dp: DPSettings,
    budget: LocalBudget,
    ledger: PrivacyLedger,
    budget_key: str,
    fingerprint: str,
    run_id: str,
    server_round: int,
    lr: float,
    momentum: float,
    batch_size: int,
    local_epochs: int | None,
    local_steps: int | None,
    proximal_mu: float,
    device: torch.device,
    generator: torch.Generator | None,
) -> PrivateRoundResult:
    """Train one federated round with DP-SGD inside the data holder's budget.

    Args:
        model: The model holding the global weights; it is copied, never modified.
        train_set: The private training data.
        dp: DP-SGD parameters (possibly requested by the server).
        budget: The data holder's own budget; the only source of the limit.
        ledger: The data holder's ledger.
        budget_key: The holder's declared data-set name; the spend counts against it.
        fingerprint: The data's fingerprint (:func:`fingerprint_dataset`), recorded for
            audit: a change is warned about, never a fresh budget.
        run_id: Identifier of the federated run (audit only).
        server_round: Round number (audit only).
        lr: SGD learning rate.
        momentum: SGD momentum.
        batch_size: Expected logical batch size; ``q = 1 / ceil(n / batch_size)``.
        local_epochs: Epochs of ``ceil(n / batch_size)`` steps; or None.
        local_steps: Exact number of steps; or None. Exactly one must be given.
        proximal_mu: FedProx coefficient (0 disables it).
        device: Where to train.
        generator: Seeds sampling and noise, for reproducible simulation only.

    Returns:
        The trained weights and what the round spent.

    Raises:
        BudgetExceededError: the round does not fit the budget (nothing was read).
        ConfigError: a hyper-parameter is invalid (nothing was reserved).
        ModelError: the model is not DP-SGD compatible (nothing was reserved).
        LedgerError: the ledger is unreadable, or the engine's accounting disagrees with it.
    """
    _check_hyperparameters(lr=lr, momentum=momentum, proximal_mu=proximal_mu)
    num_examples = len(train_set)  # metadata, treated as public; no example is read
    planned = plan_steps(
        num_examples=num_examples,
        batch_size=batch_size,
        local_epochs=local_epochs,
        local_steps=local_steps,
    )
    sample_rate = sample_rate_for(num_examples, batch_size)
    warning = delta_warning(budget.target_delta, num_examples)
    if warning is not None:
        log.warning("budget %r: %s", budget_key, warning)
    check_model(model)
    mode = choose_grad_sample_mode(model, dp.grad_sample_mode, device)
    reservation = ledger.reserve_within_budget(
        budget_key=budget_key,
        fingerprint=fingerprint,
        run_id=run_id,
        server_round=server_round,
        noise_multiplier=dp.noise_multiplier,
        sample_rate=sample_rate,
        steps=planned,
        budget=budget,
    )
    # From here on data is read. Any exception leaves the reservation open (fail closed).
    trained = train_dp_sgd(
        model=model,
        train_set=train_set,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        batch_size=batch_size,
        steps=reservation.steps,
        lr=lr,
        momentum=momentum,
        proximal_mu=proximal_mu,
        grad_sample_mode=mode,
        accountant=dp.accountant,
        prior_history=gaussian_part(reservation.prior_history),  # distributed rounds: not Opacus'
        device=device,
        generator=generator,
    )
    return _commit(
        ledger,
        reservation,
        trained,
        dp=dp,
        budget=budget,
        sample_rate=sample_rate,
        num_examples=num_examples,
    )


def _commit(
    ledger: PrivacyLedger,
    reservation: Reservation,
    trained: LocalTrainingResult,
    *,
    dp: DPSettings,
    budget: LocalBudget,
    sample_rate: float,
    num_examples: int,
) -> PrivateRoundResult:
    """Cross-check Opacus' accounting against the ledger, then commit the steps run."""
    spent = extend_history(
        reservation.prior_history,
        noise_multiplier=dp.noise_multiplier,
        sample_rate=sample_rate,
        steps=trained.steps,
    )
    if trained.history != gaussian_part(spent):
        raise LedgerError(
            f"Opacus accounted {trained.history}, the ledger expected {spent}; "
            f"reservation {reservation.entry_id} stays open"
        )
    epsilon_after = budget_epsilon(spent, budget)
    ledger.commit(reservation.entry_id, actual_steps=trained.steps, epsilon_after=epsilon_after)
    return PrivateRoundResult(
        state_dict=trained.state_dict,
        steps=trained.steps,
        planned_steps=reservation.planned_steps,
        truncated=reservation.truncated,
        epsilon_before=reservation.epsilon_before,
        epsilon_after=epsilon_after,
        train_loss=trained.train_loss,
        num_examples=num_examples,
        grad_sample_mode=trained.grad_sample_mode,
    )
