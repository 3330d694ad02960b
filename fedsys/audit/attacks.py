"""Scoring canaries from what the server sees: the sequence of released global models.

``gradient_alignment`` (white-box, the attack of Steinke, Nasr & Jagielski, NeurIPS 2023,
Sec. 6, with input-space canaries): for every pair of consecutive released models
``theta_t -> theta_{t+1}`` add ``<theta_{t+1} - theta_t, -g_i(theta_t)> / ||g_i(theta_t)||``,
where ``g_i`` is canary i's loss gradient. An included canary was trained on, so the models
moved along its negative gradient; an excluded one's score is only noise and the drift
of the other records. Higher score = guess "in".

``noise_replay``: the same score after subtracting the DP noise the attacker believes it
can regenerate. If DP noise were seeded from anything the server knows (the round number,
the scenario seed), the server could replay the generator, remove the noise from each
release and read the clipped gradients in the clear. The attacker is handed a hypothesis
(one torch generator per release, built from the server's own inputs) and the draw order of
Opacus (one Gaussian per parameter tensor per step, ``std = noise_multiplier *
max_grad_norm``, :func:`opacus.optimizers.optimizer._generate_noise`); the scale of the noise
in the release (learning rate over expected batch size) is fitted by least squares, so it
needs no secret batch size. Plain SGD (no momentum) only. Against correctly seeded noise the
replayed noise is unrelated, and subtracting it only adds noise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from opacus.optimizers.optimizer import _generate_noise
from torch import nn
from torch.func import functional_call, grad, vmap

from fedsys.audit.canaries import CanarySet
from fedsys.errors import ConfigError

Weights = dict[str, np.ndarray]
NoiseHypothesis = Callable[[int], torch.Generator]


def _flat(weights: Weights, names: Sequence[str]) -> torch.Tensor:
    return torch.cat([torch.from_numpy(np.asarray(weights[n], dtype=np.float32)).reshape(-1) for n in names])


def canary_gradients(model: nn.Module, weights: Weights, canaries: CanarySet) -> torch.Tensor:
    """Per-canary loss gradients at ``weights``, flattened in parameter order: ``m x params``."""
    names = [n for n, _ in model.named_parameters()]
    params = {n: torch.from_numpy(np.asarray(weights[n], dtype=np.float32)) for n in names}
    buffers = dict(model.named_buffers())
    loss = nn.CrossEntropyLoss()

    def one(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        value: torch.Tensor = loss(out, y.unsqueeze(0))
        return value

    x = torch.from_numpy(canaries.x.astype(np.float32))
    y = torch.from_numpy(canaries.y)
    grads = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([grads[n].reshape(len(canaries), -1) for n in names], dim=1)


def gradient_alignment(
    model: nn.Module,
    releases: Sequence[Weights],
    canaries: CanarySet,
    *,
    denoised: Sequence[torch.Tensor] | None = None,
    peak: bool = False,
) -> np.ndarray:
    """Sum over consecutive releases of the model step projected on each canary's descent direction.

    Args:
        model: A module of the scenario's architecture (only its structure is used).
        releases: Global weights the server saw, oldest first (the initial model included).
        canaries: All m canaries, included or not.
        denoised: Optional replacement for each release step ``theta_{t+1} - theta_t`` (flat).
        peak: Score by the largest single-release projection instead of the sum (a canary whose
            unclipped gradient is fitted in one step moves the model once, then never again).

    Returns:
        One score per canary (higher: more likely included).

    Raises:
        ConfigError: fewer than two releases.
    """
    per_step = projections(model, releases, canaries, denoised=denoised)
    return (per_step.max(dim=0).values if peak else per_step.sum(dim=0)).numpy()


def projections(
    model: nn.Module,
    releases: Sequence[Weights],
    canaries: CanarySet,
    *,
    denoised: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``releases - 1`` x m: each release step projected on each canary's unit descent direction.

    Raises:
        ConfigError: fewer than two releases.
    """
    if len(releases) < 2:
        raise ConfigError(f"an audit needs at least two released models, got {len(releases)}")
    names = [n for n, _ in model.named_parameters()]
    model.eval()
    per_step = torch.zeros(len(releases) - 1, len(canaries), dtype=torch.float64)
    for t in range(len(releases) - 1):
        step = (
            denoised[t] if denoised is not None else _flat(releases[t + 1], names) - _flat(releases[t], names)
        )
        g = canary_gradients(model, releases[t], canaries)
        norms = g.norm(dim=1).clamp_min(1e-12)
        per_step[t] = (-(g @ step) / norms).double()
    return per_step


def step_likelihood(
    per_step: torch.Tensor, *, unit: float, sample_rate: float, noise_multiplier: float
) -> np.ndarray:
    """Log-likelihood ratio "in" vs "out" when every release is one DP-SGD step (all iterates seen).

    A release step projected on a canary's direction, in units of one clipped gradient
    (``unit = lr * max_grad_norm / batch_size``), is ``N(0, sigma^2)`` when the canary is out and
    the mixture ``(1 - q) N(0, sigma^2) + q N(1, sigma^2)`` when it is in (Poisson sampling); the
    score sums ``log(1 - q + q exp((x - 1/2) / sigma^2))`` over steps: the Neyman-Pearson statistic
    of the subsampled Gaussian mechanism, assuming a full-norm canary gradient along its direction.
    """
    x = per_step / unit
    variance = max(noise_multiplier, 1e-6) ** 2
    log_in = torch.logaddexp(
        torch.full_like(x, np.log1p(-sample_rate)), np.log(sample_rate) + (x - 0.5) / variance
    )
    return log_in.sum(dim=0).numpy()


def replayed_noise(
    model: nn.Module, generator: torch.Generator, *, steps: int, noise_multiplier: float, max_grad_norm: float
) -> torch.Tensor:
    """The sum over ``steps`` DP-SGD steps of the Gaussian noise Opacus would draw from ``generator``."""
    params = [p for p in model.parameters() if p.requires_grad]
    std = noise_multiplier * max_grad_norm
    total = torch.zeros(sum(p.numel() for p in params))
    for _ in range(steps):
        draws = [_generate_noise(std, torch.zeros_like(p), generator=generator).reshape(-1) for p in params]
        total += torch.cat(draws)
    return total


def noise_replay(
    model: nn.Module,
    releases: Sequence[Weights],
    canaries: CanarySet,
    *,
    hypothesis: NoiseHypothesis,
    steps_per_release: int,
    noise_multiplier: float,
    max_grad_norm: float,
) -> np.ndarray:
    """Gradient alignment on release steps with the hypothesised noise removed.

    ``hypothesis(t)`` is the noise generator the attacker believes produced release ``t``
    (1-based: the round number the server sent).
    """
    names = [n for n, _ in model.named_parameters()]
    cleaned = []
    for t in range(1, len(releases)):
        step = _flat(releases[t], names) - _flat(releases[t - 1], names)
        noise = replayed_noise(
            model,
            hypothesis(t),
            steps=steps_per_release,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
        )
        scale = -float(step @ noise) / max(float(noise @ noise), 1e-30)  # fitted lr / batch size
        cleaned.append(step + scale * noise)
    return gradient_alignment(model, releases, canaries, denoised=cleaned)


def server_known_noise(seed: int, partition: int) -> NoiseHypothesis:
    """Hypothesis: noise derived from (scenario seed, partition, round), as fedsys derives it for
    simulated holders (``fedsys.node.update._simulation_generator`` split by
    ``fedsys.privacy.dpsgd._split_generator``). Every input is known to the server."""

    def noise_generator(server_round: int) -> torch.Generator:
        digest = hashlib.sha256(f"{seed}/{partition}/{server_round}".encode()).digest()
        parent = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        seeds = torch.randint(0, 2**62, (2,), generator=parent)
        return torch.Generator().manual_seed(int(seeds[1]))

    return noise_generator
