"""Central DP-SGD on a scenario's pooled training data: the reference a federated run is compared to.

A trusted curator holding every client's training examples in one place trains the
scenario's model with DP-SGD (Abadi et al., CCS 2016, Alg. 1) through the same code as a
client (:func:`fedsys.privacy.dpsgd.train_dp_sgd`: Opacus, Poisson sampling, per-sample
clipping, Gaussian noise) and is evaluated on exactly the federated run's central test set.

What is held equal to the federated run, and why:

- Data: the pooled training set is the union of what the clients train on (each client's
  partition minus its local test split); the test set is :func:`central_test_data`.
- Model and start: ``build_model`` initialised under ``torch.manual_seed(config.seed)``,
  the federated run's initial global model (the global RNG is forked, not disturbed).
- DP-SGD: ``dp.max-grad-norm``, ``train.lr``, ``train.momentum``, ``train.batch-size`` (the
  expected Poisson batch) and the budget's accountant (``budget.accountant``) at
  ``budget.target-delta``. FedProx's proximal term has no central analogue and is dropped.
- Schedule: ``epochs = num-rounds x local-epochs`` by default, so every record is visited as
  often as a client's records are when it is sampled in every round (the sweep's planning
  assumption); with ``train.local-steps`` the epochs that match ``local-steps x q`` visits
  per round on average over clients. Steps are ``epochs x ceil(n / batch-size)``.
- Noise: the smallest noise multiplier (to within ``EPSILON_TOLERANCE``) whose epsilon after
  those steps at ``q = 1 / ceil(n / batch-size)`` is at most the target. That ``q`` is the
  rate Opacus samples with (``1 / len(DataLoader)``) and the one its accountant is made to
  charge; it equals ``batch-size / n`` only when the batch size divides ``n``.

The epsilon reported is the one the engine's accountant recorded (its history, evaluated at
``target-delta``); a run that would end above the target raises instead of reporting.
Target ``inf`` is non-private mini-batch SGD with the same schedule (``train_plain``).

Randomness: the reference is a simulation. With ``simulation_seed`` sampling and noise come
from a seeded ``torch.Generator`` (reproducible, NOT for protecting real data); without it
they come from fresh OS entropy, as at a real data holder.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedsys.config import RunConfig
from fedsys.data.dataset import ArrayDataset
from fedsys.data.federated import central_test_data, simulated_client_data
from fedsys.errors import BudgetExceededError, ConfigError, LedgerError
from fedsys.models import build_model
from fedsys.privacy.accounting import compute_epsilon, extend_history
from fedsys.privacy.dpsgd import (
    choose_grad_sample_mode,
    entropy_generator,
    sample_rate_for,
    steps_per_epoch,
    train_dp_sgd,
)
from fedsys.privacy.planning import EPSILON_TOLERANCE, noise_for_target
from fedsys.privacy.settings import Accountant
from fedsys.training import evaluate, resolve_device, train_plain

__all__ = ["CentralResult", "central_epochs", "pooled_training_data", "train_central"]


@dataclass(frozen=True)
class CentralResult:
    """One central DP-SGD reference run.

    Attributes:
        target_epsilon: The target (``inf`` for non-private training).
        accuracy: Final model's accuracy on the federated run's central test set.
        macro_f1: Its macro-F1 there.
        loss: Its mean cross-entropy there.
        epsilon: Epsilon the engine's accountant recorded (None when non-private).
        noise_multiplier: Chosen noise multiplier (None when non-private).
        target_delta: The delta of the guarantee.
        accountant: The accountant that chose the noise and recorded the spend.
        sample_rate: Poisson sampling rate, ``1 / ceil(n / batch_size)``.
        batch_size: Expected logical batch size.
        epochs: Passes over the pooled data.
        steps: Optimiser steps taken, ``epochs * ceil(n / batch_size)``.
        num_examples: Pooled training examples.
        test_examples: Central test examples.
        simulation_seed: The seed of sampling and noise (None = OS entropy).
        seconds: Wall time of training and evaluation.
    """

    target_epsilon: float
    accuracy: float
    macro_f1: float
    loss: float
    epsilon: float | None
    noise_multiplier: float | None
    target_delta: float
    accountant: Accountant
    sample_rate: float
    batch_size: int
    epochs: int
    steps: int
    num_examples: int
    test_examples: int
    simulation_seed: int | None
    seconds: float

    @property
    def private(self) -> bool:
        """False for the non-private reference."""
        return math.isfinite(self.target_epsilon)


def _client_train_sets(config: RunConfig) -> list[ArrayDataset]:
    num = config.simulation.num_clients
    return [simulated_client_data(config, partition_id=p, num_partitions=num).train for p in range(num)]


def _pool(parts: list[ArrayDataset]) -> ArrayDataset:
    return ArrayDataset(
        np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]), parts[0].num_classes
    )


def pooled_training_data(config: RunConfig) -> ArrayDataset:
    """The union of every simulated client's training examples (their local test splits excluded)."""
    return _pool(_client_train_sets(config))


def central_epochs(config: RunConfig, client_sizes: list[int]) -> int:
    """Epochs that visit each record as often as a client sampled in every round does.

    ``num-rounds x local-epochs``; with ``train.local-steps`` a client's records are visited
    ``local-steps x q_i`` times per round, so the mean of that over clients, times the rounds
    (at least 1).
    """
    train = config.train
    if not train.local_steps:
        return config.num_rounds * train.local_epochs
    rates = [sample_rate_for(n, train.batch_size) for n in client_sizes]
    return max(1, round(config.num_rounds * train.local_steps * statistics.fmean(rates)))


def _generator(simulation_seed: int | None) -> torch.Generator:
    if simulation_seed is None:
        return entropy_generator()
    # A stream of its own, apart from the clients' (which hash seed/partition/round).
    digest = hashlib.sha256(f"{simulation_seed}/central".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _initial_model(config: RunConfig, data: ArrayDataset) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the coordinator's initial global model
        return build_model(config.model, data.feature_shape, data.num_classes, fix=config.fix_model)


def _check_request(target_epsilon: float, epochs: int | None) -> None:
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, int | float):
        raise ConfigError(f"target epsilon must be a number > 0 or inf, got {target_epsilon!r}")
    if math.isnan(target_epsilon) or target_epsilon <= 0:
        raise ConfigError(f"target epsilon must be a number > 0 or inf, got {target_epsilon!r}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"central epochs must be an integer >= 1, got {epochs!r}")


def train_central(
    config: RunConfig,
    *,
    target_epsilon: float,
    epochs: int | None = None,
    simulation_seed: int | None = None,
) -> CentralResult:
    """Train the scenario's model centrally on the pooled data, with DP-SGD at ``target_epsilon``.

    Args:
        config: The scenario (data, partition, model, training and DP settings, budget).
        target_epsilon: Epsilon the whole run may spend at ``budget.target-delta``; ``inf``
            trains without DP, with the same schedule.
        epochs: Passes over the pooled data (default: :func:`central_epochs`).
        simulation_seed: Seeds sampling, noise and batch order for a reproducible
            simulation; None draws them from OS entropy.

    Returns:
        Test metrics, the epsilon the accountant recorded, the noise multiplier and steps.

    Raises:
        ConfigError: a target or epochs out of range (echoed), or no noise multiplier
            reaches the target.
        BudgetExceededError: the engine's accountant recorded more than the target.
        LedgerError: the engine's accountant recorded other steps than were planned.
    """
    _check_request(target_epsilon, epochs)
    started = time.perf_counter()
    parts = _client_train_sets(config)
    pooled = _pool(parts)
    epochs = epochs or central_epochs(config, [len(p) for p in parts])
    steps = epochs * steps_per_epoch(len(pooled), config.train.batch_size)
    device = resolve_device(config.device)
    model = _initial_model(config, pooled)
    generator = _generator(simulation_seed)
    noise: float | None = None
    epsilon: float | None = None
    if math.isfinite(target_epsilon):
        noise, epsilon = _train_private(
            model,
            pooled,
            config,
            target_epsilon=target_epsilon,
            steps=steps,
            device=device,
            generator=generator,
        )
    else:
        train = config.train
        train_plain(
            model,
            pooled,
            lr=train.lr,
            momentum=train.momentum,
            batch_size=train.batch_size,
            steps=steps,
            proximal_mu=0.0,
            device=device,
            generator=generator,
        )
    test = central_test_data(config)
    ev = evaluate(model, test, device=device)
    return CentralResult(
        target_epsilon=float(target_epsilon),
        accuracy=ev.metrics["accuracy"],
        macro_f1=ev.metrics["macro-f1"],
        loss=ev.loss,
        epsilon=epsilon,
        noise_multiplier=noise,
        target_delta=config.budget.target_delta,
        accountant=config.budget.accountant,
        sample_rate=sample_rate_for(len(pooled), config.train.batch_size),
        batch_size=config.train.batch_size,
        epochs=epochs,
        steps=steps,
        num_examples=len(pooled),
        test_examples=len(test),
        simulation_seed=simulation_seed,
        seconds=time.perf_counter() - started,
    )


def _train_private(
    model: nn.Module,
    pooled: ArrayDataset,
    config: RunConfig,
    *,
    target_epsilon: float,
    steps: int,
    device: torch.device,
    generator: torch.Generator,
) -> tuple[float, float]:
    """DP-SGD at the noise that makes ``steps`` reach the target; loads the weights into ``model``.

    Returns:
        ``(noise_multiplier, epsilon recorded by the engine's accountant)``.
    """
    accountant: Accountant = config.budget.accountant
    delta = config.budget.target_delta
    sample_rate = sample_rate_for(len(pooled), config.train.batch_size)
    noise = noise_for_target(
        target_epsilon=target_epsilon,
        target_delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant,
        epsilon_tolerance=EPSILON_TOLERANCE,
    )
    trained = train_dp_sgd(
        model=model,
        train_set=pooled.to_torch(),
        noise_multiplier=noise,
        max_grad_norm=config.dp.max_grad_norm,
        batch_size=config.train.batch_size,
        steps=steps,
        lr=config.train.lr,
        momentum=config.train.momentum,
        proximal_mu=0.0,
        grad_sample_mode=choose_grad_sample_mode(model, config.dp.grad_sample_mode, device),
        accountant=accountant,
        prior_history=[],
        device=device,
        generator=generator,
    )
    planned = extend_history([], noise_multiplier=noise, sample_rate=sample_rate, steps=steps)
    if trained.history != planned:
        raise LedgerError(f"Opacus accounted {trained.history}, central DP-SGD planned {planned}")
    epsilon = compute_epsilon(trained.history, target_delta=delta, accountant=accountant)
    if epsilon > target_epsilon:
        raise BudgetExceededError(
            f"central DP-SGD spent epsilon {epsilon!r}, above its target {target_epsilon!r}"
        )
    model.load_state_dict(trained.state_dict)
    return noise, epsilon
