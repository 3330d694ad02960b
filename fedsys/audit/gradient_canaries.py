"""White-box Dirac gradient canaries, injected into the real Opacus DP-SGD step.

Steinke, Nasr & Jagielski (NeurIPS 2023, Sec. 7, white-box setting, after Nasr et al. 2023):
the auditor may insert arbitrary per-example gradients and sees every iterate. Canary ``i``
owns one coordinate ``j_i`` of the model's flat parameter vector (parameter order of
``model.named_parameters()``); its gradient is the Dirac vector ``max_grad_norm * e_{j_i}``,
whose norm is exactly the clipping norm, so clipping leaves it unchanged. Each canary is
included with probability 1/2 (the auditor's secret bits).

Injection (no DP-SGD of fedsys' own): :func:`injecting` wraps the Opacus ``DPOptimizer`` that
:func:`fedsys.privacy.dpsgd.train_dp_sgd` builds; its ``add_noise`` first adds the sampled
canaries' vectors to ``p.summed_grad`` (the sum of the batch's clipped per-sample gradients),
then runs Opacus' own noise, scaling and step. In every step each included canary is
Poisson-sampled at ``sample_rate``: the data's own rate by default, so a canary is exactly
one more record of the mechanism the accountant describes; ``1.0`` inserts it in every step
(then the epsilon that applies to it is that of the unsubsampled Gaussian mechanism). After
each step the auditor reads the canary coordinates of the new iterate.

Coordinates are the ones real records touch least (summed absolute per-sample gradient at the
initial model; for logistic regression on MNIST the weights of always-zero pixels, which no
real gradient ever moves), ties broken by the auditor's generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedsys.errors import ConfigError
from fedsys.privacy import dpsgd

_CHUNK = 512


@dataclass(frozen=True)
class GradientCanaries:
    """m Dirac gradient canaries.

    Attributes:
        coordinate: Each canary's flat parameter index (distinct).
        included: The secret inclusion bits (probability 1/2 each).
        max_grad_norm: The canary gradient's norm (the clipping norm C).
    """

    coordinate: np.ndarray
    included: np.ndarray
    max_grad_norm: float

    def __len__(self) -> int:
        return len(self.coordinate)


def coordinate_activity(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Summed absolute per-sample loss gradient of every flat parameter coordinate."""
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    loss = nn.CrossEntropyLoss()

    def one(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value: torch.Tensor = loss(functional_call(model, (p, buffers), (x.unsqueeze(0),)), y.unsqueeze(0))
        return value

    total = torch.zeros(sum(p.numel() for p in params.values()), dtype=torch.float64)
    for start in range(0, len(labels), _CHUNK):
        grads = vmap(grad(one), in_dims=(None, 0, 0))(
            params, features[start : start + _CHUNK], labels[start : start + _CHUNK]
        )
        flat = torch.cat([grads[n].reshape(len(grads[n]), -1) for n in names], dim=1)
        total += flat.abs().sum(dim=0).double()
    return total.numpy()


def make_gradient_canaries(
    activity: np.ndarray, *, count: int, max_grad_norm: float, rng: np.random.Generator
) -> GradientCanaries:
    """The ``count`` least active coordinates, each a canary included with probability 1/2.

    Raises:
        ConfigError: ``count`` outside [2, number of parameters], or a non-positive norm.
    """
    if not 2 <= count <= len(activity):
        raise ConfigError(
            f"gradient canaries must number 2..{len(activity)} (one per parameter), got {count}"
        )
    if not max_grad_norm > 0:
        raise ConfigError(f"dp.max-grad-norm must be > 0, got {max_grad_norm!r}")
    order = np.lexsort((rng.permutation(len(activity)), activity))
    coordinate = np.sort(order[:count])
    included = rng.random(count) < 0.5
    return GradientCanaries(coordinate.astype(np.int64), included, float(max_grad_norm))


def _layout(sizes: list[int], coordinate: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per parameter tensor: which canaries it holds, and their indices inside it (flattened).

    Raises:
        ConfigError: a coordinate beyond the model's parameter count.
    """
    starts = np.cumsum([0, *sizes])
    if coordinate.max() >= starts[-1]:
        raise ConfigError(
            f"a canary coordinate ({coordinate.max()}) exceeds the model's {starts[-1]} parameters"
        )
    owner = np.searchsorted(starts, coordinate, side="right") - 1
    return [
        (torch.from_numpy(np.flatnonzero(owner == i)), torch.from_numpy(coordinate[owner == i] - start))
        for i, start in enumerate(starts[:-1])
    ]


@dataclass
class Injector:
    """Adds the sampled canaries' gradients before Opacus' noise; records every iterate's coordinates.

    Attributes:
        canaries: The canaries.
        sample_rate: Per-step Poisson rate of each included canary.
        generator: The canaries' sampling randomness (fresh OS entropy by default).
        steps: Per-step change of each canary's coordinate, one row per DP-SGD step.
        expected_batch_size: Opacus' divisor of the noised sum (read from the optimizer).
    """

    canaries: GradientCanaries
    sample_rate: float
    generator: torch.Generator = field(default_factory=dpsgd.entropy_generator)
    steps: list[np.ndarray] = field(default_factory=list)
    expected_batch_size: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.sample_rate <= 1:
            raise ConfigError(f"canary sample rate must be in (0, 1], got {self.sample_rate!r}")

    def attach(self, optimizer: Any) -> None:
        """Wrap one Opacus DPOptimizer's ``add_noise`` and ``step``."""
        params: list[Any] = list(optimizer.params)  # Opacus adds summed_grad to each
        layout = _layout([p.numel() for p in params], self.canaries.coordinate)
        included = torch.from_numpy(self.canaries.included)
        add_noise, step = optimizer.add_noise, optimizer.step
        self.expected_batch_size = int(optimizer.expected_batch_size)

        def read() -> np.ndarray:
            values = np.zeros(len(self.canaries))
            for p, (ids, local) in zip(params, layout, strict=True):
                values[ids.numpy()] = p.detach().reshape(-1)[local.to(p.device)].double().cpu().numpy()
            return values

        last = [read()]

        def add_canaries_then_noise() -> None:
            sampled = included & (torch.rand(len(included), generator=self.generator) < self.sample_rate)
            for p, (ids, local) in zip(params, layout, strict=True):
                hit = local[sampled[ids]]
                if len(hit):
                    dirac = torch.zeros(p.numel(), dtype=p.summed_grad.dtype, device=p.summed_grad.device)
                    dirac[hit.to(dirac.device)] = self.canaries.max_grad_norm
                    p.summed_grad = p.summed_grad + dirac.view_as(p.summed_grad)
            add_noise()

        def step_and_observe(closure: Any = None) -> Any:
            out = step(closure)
            now = read()
            self.steps.append(now - last[0])
            last[0] = now
            return out

        optimizer.add_noise = add_canaries_then_noise
        optimizer.step = step_and_observe


@contextmanager
def injecting(injector: Injector) -> Iterator[Injector]:
    """Within the block, every DPOptimizer built by ``train_dp_sgd`` carries the canaries."""
    real = dpsgd._make_private

    def make_private(*args: Any, **kwargs: Any) -> Any:
        private = real(*args, **kwargs)
        injector.attach(private.optimizer)
        return private

    dpsgd._make_private = make_private
    try:
        yield injector
    finally:
        dpsgd._make_private = real
