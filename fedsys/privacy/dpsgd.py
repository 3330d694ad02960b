"""DP-SGD local training with an Opacus ``PrivacyEngine`` (Abadi et al., CCS 2016, Alg. 1).

Each step samples a logical batch by Poisson sampling (every example independently with
probability ``q``), clips every per-sample gradient to L2 norm ``max_grad_norm``, sums,
adds Gaussian noise with standard deviation ``noise_multiplier * max_grad_norm`` and
divides by the expected batch size. One step is one logical batch; empty batches are
processed like any other (noise is still added and the step is still counted), because
skipping them would reveal that they were empty.

Assumptions and limitations, stated honestly:

- Sample-level DP under add/remove adjacency; the number of examples ``n`` is treated as
  public. Opacus samples with ``q = 1 / ceil(n / batch_size)`` (``1/len(DataLoader)``),
  which is what :func:`sample_rate_for` returns and what the ledger records; it is
  ``batch_size / n`` only when ``batch_size`` divides ``n``.
- Randomness: noise and sampling come from torch's pseudo-random generators. A real
  data holder passes no generator and gets two seeded from fresh OS entropy every round
  (:func:`entropy_generator`), so no one -- the server included -- can predict or replay
  them; a seeded ``torch.Generator`` is for reproducible simulation only. torch's
  generators are not cryptographically secure streams.
  Opacus' secure noise (``secure_mode``) needs ``torchcsprng``, whose last PyPI release
  (2021) is unmaintained and not verified with the torch in use, so fedsys does not use
  ``secure_mode``. Against an adversary who can exploit the PRNG or floating-point
  artefacts (Mironov, CCS 2012; Jin et al., IEEE S&P 2022) the guarantee is weaker than
  the accountant states. Same seed, same weights: bit for bit on CPU; on CUDA only where
  kernels are deterministic (measured: not for the CNN in ghost mode, whose
  ``adaptive_avg_pool2d`` backward uses atomics).
- The FedProx proximal term is applied as a decoupled step after each optimiser step,
  ``w -= lr * mu * (w - w_global)``. It reads only the already-privatised weights and
  the public global weights, so it is post-processing (Dwork & Roth 2014, Prop. 2.1) and
  costs no privacy. Momentum is post-processing of the noised gradients for the same
  reason.
- The reported training loss is computed on private data without noise; it is NOT
  covered by the DP guarantee and should stay local.
"""

from __future__ import annotations

import copy
import math
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from opacus import PrivacyEngine
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
    GradSampleModuleFastGradientClipping,
)
from opacus.grad_sample.gsm_base import AbstractGradSampleModule
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedsys.errors import ConfigError, LedgerError, ModelError
from fedsys.privacy.accounting import Segment
from fedsys.privacy.settings import Accountant, GradSampleMode

TrainingMode = Literal["hooks", "ghost"]

# Opacus warns on every PrivacyEngine without secure_mode; the limitation is documented
# in this module's docstring, so the warning carries no information here.
_SECURE_RNG_WARNING = "Secure RNG turned off"
# torch warns when Opacus' full backward hooks fire on a first layer whose input does not
# require grad (always true for data); the per-sample gradients are still exact.
_FULL_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Logical batches in one epoch of Poisson sampling: ``ceil(n / batch_size)``."""
    if num_examples < 1:
        raise ConfigError(f"the training set must not be empty, got {num_examples} examples")
    if batch_size < 1:
        raise ConfigError(f"train.batch-size must be >= 1, got {batch_size}")
    return math.ceil(num_examples / batch_size)


def sample_rate_for(num_examples: int, batch_size: int) -> float:
    """The Poisson sampling rate Opacus uses: ``1 / len(DataLoader(batch_size))``."""
    return 1.0 / steps_per_epoch(num_examples, batch_size)


def plan_steps(
    *, num_examples: int, batch_size: int, local_epochs: int | None, local_steps: int | None
) -> int:
    """Number of DP-SGD steps for a round: ``local_steps``, or epochs times batches.

    Raises:
        ConfigError: both or neither of ``local_epochs``/``local_steps`` given, or < 1.
    """
    if local_steps is not None and local_epochs is None:
        if local_steps < 1:
            raise ConfigError(f"train.local-steps must be >= 1, got {local_steps}")
        return local_steps
    if local_epochs is not None and local_steps is None:
        if local_epochs < 1:
            raise ConfigError(f"train.local-epochs must be >= 1, got {local_epochs}")
        return local_epochs * steps_per_epoch(num_examples, batch_size)
    raise ConfigError(f"give exactly one of local_epochs/local_steps, got {local_epochs}/{local_steps}")


def check_model(model: nn.Module) -> None:
    """Reject models Opacus cannot train correctly.

    Raises:
        ModelError: the model is already wrapped, has in-place activations (they break
            per-sample gradient hooks) or layers Opacus does not support (BatchNorm).
    """
    if isinstance(model, AbstractGradSampleModule):
        raise ModelError("pass a plain nn.Module, not an Opacus GradSampleModule")
    inplace = [name for name, m in model.named_modules() if getattr(m, "inplace", False)]
    if inplace:
        raise ModelError(f"in-place modules break per-sample gradients: {inplace}")
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ModelError(f"model is not DP-SGD compatible: {errors}")


def choose_grad_sample_mode(
    model: nn.Module, requested: GradSampleMode, device: torch.device
) -> TrainingMode:
    """Resolve ``auto`` to the faster of the two (equally correct) clipping modes.

    Ghost clipping (Li et al., ICLR 2022) gets per-sample gradient norms without
    materialising per-sample gradients, but only for layers with a norm sampler
    (``nn.Linear``, ``nn.Embedding``); other layers (Conv2d, GroupNorm) still materialise
    them, and ghost always pays a second backward pass. Measured with
    ``benchmarks/dp_modes.py`` at batch 256 (2 CPU threads; one H100):

    - CPU, MLP (all Linear): ghost ~10x faster than hooks -> ghost.
    - CPU, GroupNorm CNN (conv + linear head): hooks ~1.5x faster than ghost -> hooks.
    - CUDA: hooks as fast or faster for both -> hooks.

    So ``auto`` picks ghost on CPU when every trainable layer has a norm sampler, and
    hooks otherwise. Never with an ``nn.Embedding``: Opacus 1.6's ghost clipping crashes on
    the empty batches Poisson sampling produces when the model has one (``cannot reshape
    tensor of 0 elements``), so ``auto`` picks hooks and an explicit ``ghost`` is refused.

    Raises:
        ConfigError: ``ghost`` requested for a model with an ``nn.Embedding``.
    """
    has_embedding = any(isinstance(m, nn.Embedding) for m in model.modules())
    if requested == "ghost" and has_embedding:
        raise ConfigError(
            'dp.grad-sample-mode = "ghost" cannot train a model with nn.Embedding (Opacus fails on '
            'empty Poisson batches); use "hooks" or "auto"'
        )
    if requested != "auto":
        return requested
    if has_embedding:
        return "hooks"
    if device.type != "cpu":
        return "hooks"
    norm_samplers = GradSampleModuleFastGradientClipping.NORM_SAMPLERS
    trainable = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    all_ghost = bool(trainable) and all(type(m) in norm_samplers for m in trainable)
    return "ghost" if all_ghost else "hooks"


@dataclass(frozen=True)
class LocalTrainingResult:
    """Outcome of :func:`train_dp_sgd`.

    Attributes:
        state_dict: Trained weights with plain keys (no ``_module.`` prefix), on CPU.
        steps: DP-SGD steps taken (logical batches, empty ones included).
        train_loss: Mean loss over the examples seen; NOT privatised.
        grad_sample_mode: The mode used.
        history: The engine accountant's history after training.
    """

    state_dict: dict[str, torch.Tensor]
    steps: int
    train_loss: float
    grad_sample_mode: TrainingMode
    history: list[Segment]


@dataclass
class _Private:
    module: Any  # an Opacus GradSampleModule (untyped library)
    optimizer: Any
    criterion: Any
    loader: DataLoader[Any]
    engine: PrivacyEngine


def entropy_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded with 63 fresh bits of OS entropy (``secrets``).

    torch's default generator starts from the same fixed seed in every process, and a
    SuperNode runs every message in a fresh process: left alone, a data holder would draw
    the same noise and batches each round. Seeding from the OS makes them unpredictable to
    anyone, the server included; nothing a message carries can influence them.
    """
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def _split_generator(
    generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Generator, torch.Generator]:
    """A CPU sampling generator and a noise generator on ``device``.

    Derived from ``generator`` in simulation (reproducible runs); from fresh OS entropy,
    independently, when it is None (every real data holder).
    """
    if generator is None:
        return entropy_generator("cpu"), entropy_generator(device)
    seeds = torch.randint(0, 2**62, (2,), generator=generator, device=generator.device)
    sampling = torch.Generator(device="cpu").manual_seed(int(seeds[0]))
    noise = torch.Generator(device=device).manual_seed(int(seeds[1]))
    return sampling, noise


def _make_private(
    module: nn.Module,
    train_set: Dataset[Any],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    mode: TrainingMode,
    accountant: Accountant,
    prior_history: Sequence[Segment],
    device: torch.device,
    generator: torch.Generator | None,
) -> _Private:
    sampling, noise = _split_generator(generator, device)
    loader = DataLoader(train_set, batch_size=batch_size, generator=sampling)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SECURE_RNG_WARNING, category=UserWarning)
        engine = PrivacyEngine(accountant=accountant, secure_mode=False)
    # Restored in place, so the engine's epsilon is cumulative over all earlier rounds.
    engine.accountant.load_state_dict({"history": list(prior_history), "mechanism": accountant})
    parts = engine.make_private(
        module=module,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(),
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        noise_generator=noise,
        grad_sample_mode=mode,
    )
    if mode == "ghost":
        # The returned criterion runs the second, clipped backward pass; a plain loss
        # would leave the gradients unclipped.
        gsm, dp_optimizer, criterion, dp_loader = parts
    else:
        gsm, dp_optimizer, dp_loader = parts
        criterion = nn.CrossEntropyLoss()
    num_examples = len(train_set)  # type: ignore[arg-type]  # a map-style dataset
    _account_executed_rate(engine, dp_optimizer, dp_loader, num_examples=num_examples, batch_size=batch_size)
    return _Private(gsm, dp_optimizer, criterion, dp_loader, engine)


def _account_executed_rate(
    engine: PrivacyEngine, optimizer: Any, dp_loader: Any, *, num_examples: int, batch_size: int
) -> None:
    """Make the accountant charge exactly the Poisson rate the sampler executes.

    Opacus samples with ``1/len(DataLoader)`` = ``1/k`` but accounts ``1/len(DPDataLoader)``
    = ``1/int(1/(1/k))``, which floating point makes ``1/(k-1)`` for about 6% of ``k``
    (93, 99, 105, ...). The ledger records ``1/k``; re-attaching the accountant's hook with
    the sampler's own rate makes executed, accounted and recorded rates one number.

    Raises:
        LedgerError: the sampler's rate is not the planned one (checked before any data is read).
    """
    executed = float(dp_loader.sample_rate)
    planned = sample_rate_for(num_examples, batch_size)
    if executed != planned:
        raise LedgerError(f"Opacus samples at rate {executed!r}, the ledger plans {planned!r}; not training")
    optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=executed))


def _proximal_step(params: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor], rate: float) -> None:
    """Decoupled FedProx step ``w -= rate * (w - w_global)``: post-processing only."""
    if rate == 0:
        return
    with torch.no_grad():
        for param, anchor_param in zip(params, anchor, strict=True):
            param.sub_(param - anchor_param, alpha=rate)


def _run_steps(
    private: _Private,
    *,
    steps: int,
    device: torch.device,
    anchor: Sequence[torch.Tensor],
    proximal_rate: float,
) -> float:
    params = list(private.module.parameters())
    done, loss_total, seen = 0, 0.0, 0
    while done < steps:
        for features, labels in private.loader:
            features, labels = features.to(device), labels.to(device)
            private.optimizer.zero_grad(set_to_none=True)
            loss = private.criterion(private.module(features), labels)
            loss.backward()
            private.optimizer.step()
            _proximal_step(params, anchor, proximal_rate)
            if len(labels) > 0:  # an empty batch's mean loss is NaN; it still was a step
                loss_total += float(loss.item()) * len(labels)
                seen += len(labels)
            done += 1
            if done == steps:
                break
    return loss_total / seen if seen else float("nan")


def train_dp_sgd(
    *,
    model: nn.Module,
    train_set: Dataset[Any],
    noise_multiplier: float,
    max_grad_norm: float,
    batch_size: int,
    steps: int,
    lr: float,
    momentum: float,
    proximal_mu: float,
    grad_sample_mode: TrainingMode,
    accountant: Accountant,
    prior_history: Sequence[Segment],
    device: torch.device,
    generator: torch.Generator | None,
) -> LocalTrainingResult:
    """Run ``steps`` DP-SGD steps on a fresh copy of ``model`` (``model`` is not modified).

    The copy holds the global weights; they are also the FedProx anchor. No budget is
    checked here: call it through :func:`fedsys.privacy.round.run_private_round`.
    ``noise_multiplier`` may be 0 here for testing clipping; such steps have no finite
    epsilon.

    Returns:
        The trained weights (plain keys), steps, loss and the accountant history.

    Raises:
        ModelError: the model is not compatible with Opacus.
    """
    check_model(model)
    module = copy.deepcopy(model).to(device)
    anchor = [p.detach().clone() for p in module.parameters()]
    optimizer = torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum)
    private = _make_private(
        module,
        train_set,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        batch_size=batch_size,
        optimizer=optimizer,
        mode=grad_sample_mode,
        accountant=accountant,
        prior_history=prior_history,
        device=device,
        generator=generator,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_FULL_HOOK_WARNING, category=UserWarning)
        loss = _run_steps(private, steps=steps, device=device, anchor=anchor, proximal_rate=lr * proximal_mu)
    plain = private.module._module.state_dict()  # no "_module." prefix
    state = {k: v.detach().to("cpu").clone() for k, v in plain.items()}
    history = [(float(n), float(q), int(s)) for n, q, s in private.engine.accountant.history]
    return LocalTrainingResult(state, steps, loss, grad_sample_mode, history)
