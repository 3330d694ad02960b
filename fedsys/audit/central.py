"""One-run audit of central DP-SGD: the calibration setting, and the in-process CI guard.

A trusted curator trains the scenario's model on the pooled training data plus the included
canaries with fedsys' own DP-SGD step (:func:`fedsys.privacy.dpsgd.train_dp_sgd`: Opacus,
Poisson sampling, per-sample clipping, Gaussian noise, accountant restored between calls),
exactly as :mod:`fedsys.privacy.central` does, and releases the model after every "round"
(``local-epochs`` passes over the data), as a federated server would see it. Noise and
sampling come from fresh OS entropy, as at a real data holder (``generator=None``), so a
patched-in seeding bug is exercised here, in process, where a test can patch it.

Schedule and noise match :func:`fedsys.privacy.central.train_central`: ``num-rounds x
local-epochs`` epochs at ``q = 1 / ceil(n / batch-size)``, the noise calibrated to
``dp.target-epsilon`` for that many steps (``n`` counts the expected number of included
canaries, ``m / 2``, so the noise does not depend on the secret bits). The epsilon reported is
the one the engine's accountant recorded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import numpy as np
import torch

from fedsys.audit.attacks import (
    NoiseHypothesis,
    Weights,
    gradient_alignment,
    noise_replay,
    projections,
    step_likelihood,
)
from fedsys.audit.canaries import CanarySet, default_canary_count, make_canaries, with_canaries
from fedsys.audit.gradient_canaries import Injector, coordinate_activity, injecting, make_gradient_canaries
from fedsys.audit.result import AuditResult, judge
from fedsys.config import RunConfig
from fedsys.data.dataset import ArrayDataset
from fedsys.errors import ConfigError
from fedsys.models import build_model, to_arrays
from fedsys.privacy.accounting import Segment, compute_epsilon
from fedsys.privacy.central import pooled_training_data
from fedsys.privacy.dpsgd import (
    choose_grad_sample_mode,
    entropy_generator,
    sample_rate_for,
    steps_per_epoch,
    train_dp_sgd,
)
from fedsys.privacy.planning import noise_for_target
from fedsys.training import resolve_device, train_plain

GRADIENT_ALIGNMENT = "gradient-alignment"
END_TO_END = "end-to-end-alignment"  # initial vs final model only: robust when canaries saturate
STEP_LIKELIHOOD = "step-likelihood"  # every iterate released: Neyman-Pearson per DP-SGD step
PEAK = "peak-alignment"  # the largest single-release projection: a canary fitted in one step
DIRAC_SUM = "dirac-sum"  # gradient canaries: total change of the canary's coordinate over all steps
DIRAC_LIKELIHOOD = "dirac-step-likelihood"  # gradient canaries: Neyman-Pearson per step (sampled canaries)
WHITE_BOX_CANARIES = 1000  # as Steinke, Nasr & Jagielski's white-box CIFAR-10 experiment


def _initial_model(config: RunConfig, data: ArrayDataset) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the federated run's initial global model
        return build_model(config.model, data.feature_shape, data.num_classes, fix=config.fix_model)


def _check(config: RunConfig, confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ConfigError(f"--confidence must be in (0, 1), got {confidence!r}")
    if config.dp.enabled and config.dp.target_epsilon <= 0:
        raise ConfigError(
            f"a central audit calibrates noise to dp.target-epsilon > 0, got {config.dp.target_epsilon!r}"
        )
    if config.train.local_steps:
        raise ConfigError("a central audit releases the model once per local-epochs; unset train.local-steps")


def audit_central(
    config: RunConfig,
    *,
    canaries: int | None = None,
    confidence: float = 0.95,
    amplitude: float | None = None,
    audit_seed: int | None = None,
    noise_hypotheses: Mapping[str, NoiseHypothesis] | None = None,
    every_step: bool = False,
) -> AuditResult:
    """Train centrally with canaries (DP-SGD at ``dp.target-epsilon`` when ``dp.enabled``) and audit.

    Args:
        config: The scenario (data, model, training, ``dp.enabled``, ``dp.target-epsilon``,
            ``dp.max-grad-norm``, budget delta and accountant).
        canaries: m (default: :func:`~fedsys.audit.canaries.default_canary_count`).
        confidence: 1 - beta of the lower bound.
        amplitude: The canaries' feature value (default: :func:`~fedsys.audit.canaries.make_canaries`).
        audit_seed: Seeds canaries and inclusion bits (None: OS entropy). Training noise is
            never seeded from it.
        noise_hypotheses: Extra ``noise-replay`` attackers, by name (DP only): how the server
            would regenerate each release's noise if it were seeded from the server's inputs.
        every_step: Release the model after every DP-SGD step (the white-box threat model of
            Steinke et al.: all iterates) and add the ``step-likelihood`` attack; default: after
            every ``local-epochs`` epochs, as a federated server sees it.

    Returns:
        The claimed epsilon (``inf`` without DP) and the lower bound.
    """
    _check(config, confidence)
    started = time.perf_counter()
    pooled = pooled_training_data(config)
    m = canaries if canaries is not None else default_canary_count(pooled)
    rng = np.random.default_rng(audit_seed)
    canary_set = make_canaries(pooled, count=m, rng=rng, amplitude=amplitude)
    train = with_canaries(pooled, canary_set)
    model = _initial_model(config, pooled)
    expected = len(pooled) + m // 2
    per_release = (
        1 if every_step else config.train.local_epochs * steps_per_epoch(len(train), config.train.batch_size)
    )
    releases, epsilon, noise = _train(config, model, train, expected_size=expected, per_release=per_release)
    per_step = projections(model, releases, canary_set)
    scores = {
        GRADIENT_ALIGNMENT: per_step.sum(dim=0).numpy(),
        END_TO_END: gradient_alignment(model, [releases[0], releases[-1]], canary_set),
        PEAK: per_step.max(dim=0).values.numpy(),
    }
    if config.dp.enabled:
        if every_step:
            rate = sample_rate_for(expected, config.train.batch_size)
            unit = config.train.lr * config.dp.max_grad_norm / (expected * rate)
            scores[STEP_LIKELIHOOD] = step_likelihood(
                per_step, unit=unit, sample_rate=rate, noise_multiplier=noise
            )
        for name, hypothesis in (noise_hypotheses or {}).items():
            scores[name] = noise_replay(
                model,
                releases,
                canary_set,
                hypothesis=hypothesis,
                steps_per_release=per_release,
                noise_multiplier=noise,
                max_grad_norm=config.dp.max_grad_norm,
            )
    return judge(
        scores,
        canary_set,
        epsilon=epsilon,
        delta=config.budget.target_delta,
        confidence=confidence,
        setting="central",
        dp=config.dp.enabled,
        seed=audit_seed,
        seconds=time.perf_counter() - started,
    )


def audit_central_white_box(
    config: RunConfig,
    *,
    canaries: int = WHITE_BOX_CANARIES,
    confidence: float = 0.95,
    audit_seed: int | None = None,
    canary_sample_rate: float | None = None,
) -> AuditResult:
    """Central DP-SGD with Dirac gradient canaries injected into the Opacus step; every iterate seen.

    Args:
        config: The scenario, as for :func:`audit_central`. With ``dp.enabled`` false the same
            Opacus step runs with noise multiplier 0 (clipping kept): the canaries' signal in clear.
        canaries: m, one parameter coordinate each
            (:mod:`fedsys.audit.gradient_canaries`).
        confidence: 1 - beta of the lower bound.
        audit_seed: Seeds coordinates' tie-breaks and inclusion bits (None: OS entropy); the
            noise, data sampling and canary sampling come from fresh OS entropy.
        canary_sample_rate: Per-step rate of an included canary; None: the data's Poisson rate
            (a canary is one more record, covered by the accountant's epsilon). Any other rate is
            a different mechanism for the canaries: the epsilon reported is then the accountant's
            epsilon of ``(noise, canary_sample_rate, steps)``, the guarantee that applies to them.

    Returns:
        The epsilon that bounds the canaries (``inf`` without DP) and the lower bound.
    """
    _check(config, confidence)
    started = time.perf_counter()
    cfg = config.train
    pooled = pooled_training_data(config)
    model = _initial_model(config, pooled)
    features, labels = pooled.to_torch().tensors
    canary_set = make_gradient_canaries(
        coordinate_activity(model, features, labels),
        count=canaries,
        max_grad_norm=config.dp.max_grad_norm,
        rng=np.random.default_rng(audit_seed),
    )
    data_rate = sample_rate_for(len(pooled), cfg.batch_size)
    injector = Injector(canary_set, canary_sample_rate if canary_sample_rate is not None else data_rate)
    noise = _noise(config, len(pooled)) if config.dp.enabled else 0.0
    total = config.num_rounds * cfg.local_epochs * steps_per_epoch(len(pooled), cfg.batch_size)
    with injecting(injector):
        history, _ = _private_releases(
            config,
            model,
            pooled,
            noise=noise,
            total=total,
            per_release=min(total, steps_per_epoch(len(pooled), cfg.batch_size)),
        )
    moved = -np.stack(injector.steps)  # an included canary lowers its coordinate: flip the sign
    scores = {DIRAC_SUM: moved.sum(axis=0)}
    epsilon = math.inf
    if config.dp.enabled:
        delta, accountant = config.budget.target_delta, config.budget.accountant
        if injector.sample_rate != data_rate:
            history = [(noise, injector.sample_rate, len(injector.steps))]
        epsilon = compute_epsilon(history, target_delta=delta, accountant=accountant)
        if injector.sample_rate < 1 and cfg.momentum == 0:
            unit = cfg.lr * canary_set.max_grad_norm / injector.expected_batch_size
            scores[DIRAC_LIKELIHOOD] = step_likelihood(
                torch.from_numpy(moved), unit=unit, sample_rate=injector.sample_rate, noise_multiplier=noise
            )
    return judge(
        scores,
        canary_set,
        epsilon=epsilon,
        delta=config.budget.target_delta,
        confidence=confidence,
        setting="central, white-box gradient canaries",
        dp=config.dp.enabled,
        seed=audit_seed,
        seconds=time.perf_counter() - started,
    )


def _train(
    config: RunConfig, model: torch.nn.Module, train: ArrayDataset, *, expected_size: int, per_release: int
) -> tuple[list[Weights], float, float]:
    """Run ``num-rounds`` releases; returns the released weights, the claimed epsilon and the noise."""
    cfg, dp = config.train, config.dp
    device = resolve_device(config.device)
    total = config.num_rounds * cfg.local_epochs * steps_per_epoch(len(train), cfg.batch_size)
    releases = [to_arrays(model)]
    if not dp.enabled:
        generator = entropy_generator()
        for _ in range(total // per_release):
            train_plain(
                model,
                train,
                lr=cfg.lr,
                momentum=cfg.momentum,
                batch_size=cfg.batch_size,
                steps=per_release,
                proximal_mu=0.0,
                device=device,
                generator=generator,
            )
            releases.append(to_arrays(model.cpu()))
        return releases, math.inf, 0.0
    noise = _noise(config, expected_size)
    history, private = _private_releases(
        config, model, train, noise=noise, total=total, per_release=per_release
    )
    delta, accountant = config.budget.target_delta, config.budget.accountant
    return releases + private, compute_epsilon(history, target_delta=delta, accountant=accountant), noise


def _noise(config: RunConfig, expected_size: int) -> float:
    """The noise multiplier that spends ``dp.target-epsilon`` over the run's schedule."""
    cfg = config.train
    return noise_for_target(
        target_epsilon=config.dp.target_epsilon,
        target_delta=config.budget.target_delta,
        sample_rate=sample_rate_for(expected_size, cfg.batch_size),
        steps=config.num_rounds * cfg.local_epochs * steps_per_epoch(expected_size, cfg.batch_size),
        accountant=config.budget.accountant,
    )


def _private_releases(
    config: RunConfig,
    model: torch.nn.Module,
    train: ArrayDataset,
    *,
    noise: float,
    total: int,
    per_release: int,
) -> tuple[list[Segment], list[Weights]]:
    """``total // per_release`` calls of fedsys' DP-SGD step; ``model`` ends at the last release."""
    cfg, dp = config.train, config.dp
    device = resolve_device(config.device)
    mode = choose_grad_sample_mode(model, dp.grad_sample_mode, device)
    history: list[Segment] = []
    releases: list[Weights] = []
    data = train.to_torch()
    for _ in range(total // per_release):
        trained = train_dp_sgd(
            model=model,
            train_set=data,
            noise_multiplier=noise,
            max_grad_norm=dp.max_grad_norm,
            batch_size=cfg.batch_size,
            steps=per_release,
            lr=cfg.lr,
            momentum=cfg.momentum,
            proximal_mu=0.0,
            grad_sample_mode=mode,
            accountant=config.budget.accountant,
            prior_history=history,
            device=device,
            generator=None,  # fresh OS entropy, as at a real data holder
        )
        history = trained.history
        model.load_state_dict(trained.state_dict)
        releases.append(to_arrays(model.cpu()))
    return history, releases


__all__ = ["GRADIENT_ALIGNMENT", "CanarySet", "audit_central", "audit_central_white_box"]
