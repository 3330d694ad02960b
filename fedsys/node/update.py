"""A client's work for one round: evaluate the global model locally, train, return a delta."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from fedsys.config import Accountant, FeatureRange, RunConfig
from fedsys.data import ClientData, holder_client_data, simulated_client_data
from fedsys.errors import BudgetExceededError, ConfigError, ModelError
from fedsys.evaluation import EvaluationSums, add_noise, evaluation_sums
from fedsys.models import build_model, load_weights, to_arrays
from fedsys.node.settings import HolderSettings
from fedsys.privacy import (
    DPSettings,
    LocalBudget,
    PrivacyLedger,
    fingerprint_dataset,
    plan_steps,
    run_private_round,
    sample_rate_for,
)
from fedsys.privacy.budget import budget_epsilon, grant_steps
from fedsys.privacy.dpsgd import entropy_generator
from fedsys.training import evaluate, planned_steps, resolve_device, train_plain

log = logging.getLogger("fedsys")


@dataclass(frozen=True)
class LocalUpdate:
    """A client's answer to a training request."""

    status: str  # "ok" or "budget-exhausted"
    delta: dict[str, np.ndarray] = field(default_factory=dict)
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    evaluation: EvaluationSums | None = None  # the global model's sums on the local test split


_DP_SAFE = ("epsilon", "steps", "truncated")


def shareable_metrics(
    update: LocalUpdate, *, dp_enabled: bool, secure: bool, share_epsilon: bool
) -> dict[str, float]:
    """What a client may tell the server besides its update.

    - With DP on, only quantities covered by the DP accounting may leave the client: training
      loss and local test metrics are computed on private data without noise, so they stay
      local (and are logged).
    - Epsilon, ``steps`` (``epochs * ceil(n / B)``) and ``truncated`` all reveal the number of
      examples ``n``; they leave only when the holder's policy opts in (``share-epsilon``),
      and under secure aggregation only epsilon (the server needs only "trained").
    - A plaintext round without DP is one the holder accepted explicitly (``require-dp`` and
      ``require-secagg`` off): everything is shared.
    """
    if not dp_enabled and not secure:
        return dict(update.metrics)
    if not share_epsilon:
        return {}
    keep = ("epsilon",) if secure else _DP_SAFE
    return {k: v for k, v in update.metrics.items() if k in keep}


def shares_size(*, dp_enabled: bool, share_epsilon: bool) -> bool:
    """Whether a plaintext reply may carry the exact number of training examples."""
    return share_epsilon or not dp_enabled


@lru_cache(maxsize=8)
def _holder_data(
    path: Path, label_column: str, num_classes: int, feature_range: FeatureRange | None
) -> ClientData:
    return holder_client_data(
        path, label_column=label_column, num_classes=num_classes, feature_range=feature_range
    )


def local_data(config: RunConfig, settings: HolderSettings) -> ClientData:
    """The client's own train/test split (its partition in simulation, its file in deployment)."""
    if settings.partition_id is not None and settings.num_partitions is not None:
        return simulated_client_data(
            config, partition_id=settings.partition_id, num_partitions=settings.num_partitions
        )
    if settings.data_path is None:
        raise ConfigError("this node has neither a data-path nor a simulation partition")
    return _holder_data(
        settings.data_path,
        settings.label_column,
        settings.num_classes or config.num_classes,
        settings.feature_range,  # the holder's own declaration; the server's feature-range is ignored
    )


def _simulation_generator(
    config: RunConfig, settings: HolderSettings, server_round: int
) -> torch.Generator | None:
    """A reproducible generator for a virtual client; None (fresh OS entropy) at a real holder.

    The scenario's seed and the round come from the server: at a real data holder they must
    not shape DP noise or sampling, or the server could regenerate the noise and recover the
    clipped gradients (and two runs with one seed would share noise that cancels).
    """
    if not settings.simulated:
        return None
    digest = hashlib.sha256(f"{config.seed}/{settings.partition_id}/{server_round}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def compute_update(
    config: RunConfig,
    settings: HolderSettings,
    global_arrays: dict[str, np.ndarray],
    *,
    server_round: int,
    run_id: str,
) -> LocalUpdate:
    """Evaluate ``global_arrays`` on local test data, train locally, and return the delta.

    Raises:
        ModelError: the global weights do not fit the local model, or training diverged.
    """
    data = local_data(config, settings)
    device = resolve_device(settings.device if settings.device != "auto" else config.device)
    model = build_model(config.model, data.train.feature_shape, data.train.num_classes, fix=config.fix_model)
    load_weights(model, global_arrays, source="server")
    before = evaluate(model, data.test, device=device)
    sums = local_evaluation(model, data, config, device=device) if config.evaluation.federated else None
    model.train()  # evaluate() leaves eval mode; Opacus refuses a model that is not training
    metrics = {
        "eval-loss": before.loss,
        "eval-accuracy": before.metrics["accuracy"],
        "eval-examples": float(before.num_examples),
    }
    generator = _simulation_generator(config, settings, server_round)
    if config.dp.enabled:
        try:
            trained, train_metrics = _train_private(
                model,
                data,
                config,
                settings,
                generator,
                device=device,
                server_round=server_round,
                run_id=run_id,
            )
        except BudgetExceededError as err:
            _, spent = precheck_budget(config, settings)
            return LocalUpdate(
                status="budget-exhausted",
                metrics={**metrics, "epsilon": spent},
                reason=str(err),
                evaluation=sums,
            )
    else:
        steps = planned_steps(
            len(data.train),
            batch_size=config.train.batch_size,
            local_epochs=config.train.local_epochs,
            local_steps=config.train.local_steps,
        )
        stats = train_plain(
            model,
            data.train,
            lr=config.train.lr,
            momentum=config.train.momentum,
            batch_size=config.train.batch_size,
            steps=steps,
            proximal_mu=config.train.proximal_mu,
            device=device,
            generator=generator if generator is not None else entropy_generator(),
        )
        trained, train_metrics = (
            to_arrays(model.cpu()),
            {"train-loss": stats.loss, "steps": float(stats.steps)},
        )
    delta = {k: trained[k] - global_arrays[k] for k in global_arrays}
    for name, value in delta.items():
        if not np.isfinite(value).all():
            raise ModelError(
                f"local training diverged: update {name} contains NaN or infinite values "
                f"(try a smaller train.lr than {config.train.lr})"
            )
    return LocalUpdate(
        status="ok",
        delta=delta,
        num_examples=len(data.train),
        metrics={**metrics, **train_metrics},
        evaluation=sums,
    )


def local_evaluation(
    model: torch.nn.Module, data: ClientData, config: RunConfig, *, device: torch.device
) -> EvaluationSums:
    """The federated-evaluation sums of ``model`` on the local test split (at most
    ``secagg.max-weight`` records, each loss clipped to ``evaluation.loss-bound``)."""
    return evaluation_sums(
        model,
        data.test,
        device=device,
        loss_bound=config.evaluation.loss_bound,
        max_examples=int(config.secagg.max_weight),
    )


def release_evaluation(
    sums: EvaluationSums, config: RunConfig, settings: HolderSettings, *, server_round: int, run_id: str
) -> EvaluationSums | None:
    """The sums as they may leave this holder: exact, or with ``evaluation.noise-multiplier`` z > 0
    the Gaussian mechanism's output, charged first (write-ahead) to the holder's ledger as one
    release of multiplier z at sampling rate 1. None when the budget cannot pay for it.
    """
    z = config.evaluation.noise_multiplier
    if z <= 0:
        return sums
    data = local_data(config, settings)
    ledger = _ledger(settings)
    try:
        try:
            reservation = ledger.reserve_within_budget(
                budget_key=settings.dataset_name,
                fingerprint=fingerprint_dataset(data.train.x, data.train.y),
                run_id=run_id,
                server_round=server_round,
                noise_multiplier=z,
                sample_rate=1.0,
                steps=1,
                budget=holder_budget(settings),
            )
        except BudgetExceededError as err:
            log.warning("federated evaluation kept private: %s", err)
            return None
        noisy = add_noise(
            sums,
            noise_multiplier=z,
            loss_bound=config.evaluation.loss_bound,
            rng=_evaluation_rng(config, settings, server_round),
        )
        ledger.commit(reservation.entry_id, actual_steps=1, epsilon_after=reservation.epsilon_after)
    finally:
        ledger.close()
    return noisy


def _evaluation_rng(config: RunConfig, settings: HolderSettings, server_round: int) -> np.random.Generator:
    """Noise for the released sums: fresh OS entropy at a real holder, reproducible in simulation."""
    if not settings.simulated:
        return np.random.default_rng(secrets.randbits(128))
    digest = hashlib.sha256(f"eval/{config.seed}/{settings.partition_id}/{server_round}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def evaluate_global(
    config: RunConfig, settings: HolderSettings, global_arrays: dict[str, np.ndarray]
) -> EvaluationSums:
    """Score the global model on the local test split only (the final, evaluation-only exchange)."""
    data = local_data(config, settings)
    device = resolve_device(settings.device if settings.device != "auto" else config.device)
    model = build_model(config.model, data.train.feature_shape, data.train.num_classes, fix=config.fix_model)
    load_weights(model, global_arrays, source="server")
    return local_evaluation(model, data, config, device=device)


def _noise_multiplier(config: RunConfig, settings: HolderSettings, num_examples: int) -> float:
    """The scenario's noise multiplier, or one calibrated once for the whole run's schedule."""
    if config.dp.target_epsilon <= 0:
        return config.dp.noise_multiplier
    epochs, steps = _local_epochs_steps(config)
    per_round = plan_steps(
        num_examples=num_examples, batch_size=config.train.batch_size, local_epochs=epochs, local_steps=steps
    )
    return _calibrated(
        config.dp.target_epsilon,
        settings.budget.target_delta,
        sample_rate_for(num_examples, config.train.batch_size),
        config.num_rounds * per_round,
        settings.budget.accountant,  # the holder enforces its budget with its own accountant
    )


@lru_cache(maxsize=64)
def _calibrated(target: float, delta: float, sample_rate: float, steps: int, accountant: Accountant) -> float:
    from fedsys.privacy.planning import noise_for_target

    return noise_for_target(
        target_epsilon=target, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant
    )


def _dp_settings(
    config: RunConfig, settings: HolderSettings, num_examples: int
) -> tuple[DPSettings, LocalBudget]:
    dp = DPSettings(
        noise_multiplier=_noise_multiplier(config, settings, num_examples),
        max_grad_norm=config.dp.max_grad_norm,
        accountant=config.dp.accountant,
        grad_sample_mode=config.dp.grad_sample_mode,
    )
    return dp, holder_budget(settings)


def holder_budget(settings: HolderSettings) -> LocalBudget:
    """The holder's own budget (its node config; never the server's run config)."""
    return LocalBudget(
        max_epsilon=settings.budget.max_epsilon,
        target_delta=settings.budget.target_delta,
        policy=settings.budget.policy,
        accountant=settings.budget.accountant,
    )


def _ledger(settings: HolderSettings) -> PrivacyLedger:
    if settings.simulated:  # a real holder's ledger is created only by `fedsys ledger init`
        settings.ledger_path.parent.mkdir(parents=True, exist_ok=True)
    return PrivacyLedger.open(settings.ledger_path, create=settings.simulated)


def _local_epochs_steps(config: RunConfig) -> tuple[int | None, int | None]:
    if config.train.local_steps:
        return None, config.train.local_steps
    return config.train.local_epochs, None


def precheck_budget(config: RunConfig, settings: HolderSettings) -> tuple[str, float]:
    """Would this round's DP-SGD fit the holder's budget? Reads no example, reserves nothing.

    Returns:
        ``("", epsilon_spent)`` when it fits (possibly truncated), else ``(reason, epsilon_spent)``.
    """
    if not config.dp.enabled:
        return "", 0.0
    data = local_data(config, settings)
    n = len(data.train)
    dp, budget = _dp_settings(config, settings, n)
    epochs, steps = _local_epochs_steps(config)
    planned = plan_steps(
        num_examples=n, batch_size=config.train.batch_size, local_epochs=epochs, local_steps=steps
    )
    ledger = _ledger(settings)
    try:
        prior = ledger.history(settings.dataset_name)
    finally:
        ledger.close()
    spent = budget_epsilon(prior, budget)
    try:
        grant_steps(
            prior,
            noise_multiplier=dp.noise_multiplier,
            sample_rate=sample_rate_for(n, config.train.batch_size),
            steps=planned,
            budget=budget,
        )
    except BudgetExceededError as err:
        return str(err), spent
    return "", spent


def _train_private(
    model: torch.nn.Module,
    data: ClientData,
    config: RunConfig,
    settings: HolderSettings,
    generator: torch.Generator | None,
    *,
    device: torch.device,
    server_round: int,
    run_id: str,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    dp, budget = _dp_settings(config, settings, len(data.train))
    epochs, steps = _local_epochs_steps(config)
    ledger = _ledger(settings)
    try:
        result = run_private_round(
            model=model,
            train_set=data.train.to_torch(),
            dp=dp,
            budget=budget,
            ledger=ledger,
            budget_key=settings.dataset_name,
            fingerprint=fingerprint_dataset(data.train.x, data.train.y),
            run_id=run_id,
            server_round=server_round,
            lr=config.train.lr,
            momentum=config.train.momentum,
            batch_size=config.train.batch_size,
            local_epochs=epochs,
            local_steps=steps,
            proximal_mu=config.train.proximal_mu,
            device=device,
            generator=generator,
        )
    finally:
        ledger.close()
    arrays = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in result.state_dict.items()}
    return arrays, {
        "train-loss": result.train_loss,
        "steps": float(result.steps),
        "epsilon": result.epsilon_after,
        "truncated": float(result.truncated),
    }
