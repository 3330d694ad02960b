"""DP-SGD training step: exact per-sample clipping, empty batches, fresh copies, FedProx, modes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus import GradSampleModule
from privacy_builders import CPU, blobs, tiny_cnn, tiny_mlp
from torch import nn
from torch.utils.data import TensorDataset

from fedsys.errors import ConfigError, ModelError
from fedsys.privacy import choose_grad_sample_mode, plan_steps, sample_rate_for
from fedsys.privacy.dpsgd import LocalTrainingResult, TrainingMode, check_model, train_dp_sgd


def _train(model: nn.Module, data: TensorDataset, **overrides: Any) -> LocalTrainingResult:
    kwargs: dict[str, Any] = {
        "noise_multiplier": 0.0,
        "max_grad_norm": 1.0,
        "batch_size": len(data),  # q = 1: every example in every batch
        "steps": 1,
        "lr": 1.0,
        "momentum": 0.0,
        "proximal_mu": 0.0,
        "grad_sample_mode": "hooks",
        "accountant": "rdp",
        "prior_history": [],
        "device": CPU,
        "generator": torch.Generator().manual_seed(0),
    }
    kwargs.update(overrides)
    return train_dp_sgd(model=model, train_set=data, **kwargs)


def _norm(tensors: Iterable[torch.Tensor]) -> float:
    """L2 norm of all entries of several tensors taken together."""
    return float(torch.linalg.vector_norm(torch.cat([t.flatten() for t in tensors])))


def _clipped_sum_independently(
    model: nn.Module, data: TensorDataset, max_grad_norm: float
) -> dict[str, torch.Tensor]:
    """Sum of per-sample gradients, each clipped to ``max_grad_norm``, one example at a time."""
    names = [name for name, _ in model.named_parameters()]
    total = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for features, label in zip(*data.tensors, strict=True):
        loss = nn.functional.cross_entropy(model(features[None]), label[None])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        norm = _norm(grads)
        factor = 1.0 if norm == 0 else min(1.0, max_grad_norm / norm)
        for name, grad in zip(names, grads, strict=True):
            total[name] += factor * grad
    return total


def _images(n: int, scale: float) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(scale * torch.randn(n, 1, 6, 6, generator=gen), torch.arange(n) % 2)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@settings(max_examples=6, deadline=None)
@given(max_grad_norm=st.floats(0.01, 5.0), scale=st.floats(0.1, 50.0))
def test_update_is_the_sum_of_independently_clipped_per_sample_gradients(
    mode: TrainingMode, kind: str, max_grad_norm: float, scale: float
) -> None:
    n = 6
    model = tiny_mlp() if kind == "mlp" else tiny_cnn()
    data = blobs(n=n, scale=scale) if kind == "mlp" else _images(n, scale)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    result = _train(model, data, max_grad_norm=max_grad_norm, grad_sample_mode=mode)

    expected = _clipped_sum_independently(model, data, max_grad_norm)
    for name, clipped_sum in expected.items():
        update = before[name] - result.state_dict[name]  # lr = 1, noise 0, divided by E|B| = n
        torch.testing.assert_close(update, clipped_sum / n, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_huge_gradients_move_weights_by_at_most_lr_times_max_grad_norm(mode: TrainingMode) -> None:
    model, gen = tiny_mlp(), torch.Generator().manual_seed(3)
    data = TensorDataset(1000 * torch.randn(8, 4, generator=gen), torch.arange(8) % 2)  # many wrong
    raw = _clipped_sum_independently(model, data, max_grad_norm=float("inf"))
    raw_norm = _norm(raw.values()) / 8
    before = [p.detach().clone() for p in model.parameters()]

    result = _train(model, data, max_grad_norm=0.1, lr=2.0, grad_sample_mode=mode)

    moved = _norm(b - a for b, a in zip(before, result.state_dict.values(), strict=True))
    assert raw_norm > 100 * 2.0 * 0.1  # an unclipped (plain-criterion) update would be far larger
    assert moved <= 2.0 * 0.1 * (1 + 1e-5)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_poisson_empty_batches_are_survived_and_counted(mode: TrainingMode, kind: str) -> None:
    model = tiny_mlp() if kind == "mlp" else tiny_cnn()
    data = blobs(n=3) if kind == "mlp" else _images(3, 1.0)
    batch_sizes: list[int] = []
    model.register_forward_pre_hook(lambda _module, args: batch_sizes.append(len(args[0])))

    result = _train(model, data, batch_size=1, steps=30, noise_multiplier=1.0, lr=0.1, grad_sample_mode=mode)

    assert 0 in batch_sizes and len(batch_sizes) == 30  # the fresh copy carries the hook
    assert result.steps == 30 and result.history == [(1.0, 1 / 3, 30)]
    assert all(torch.isfinite(v).all() for v in result.state_dict.values())


def test_training_uses_a_fresh_copy_and_returns_plain_keys() -> None:
    model = tiny_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    first = _train(model, blobs(n=16), noise_multiplier=1.0)
    second = _train(model, blobs(n=16), noise_multiplier=1.0)  # re-wrapping would raise

    assert not isinstance(model, GradSampleModule)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert list(first.state_dict) == list(before) == list(second.state_dict)


def test_seeded_generator_reproduces_weights_exactly() -> None:
    def run(seed: int) -> dict[str, torch.Tensor]:
        data = blobs(n=40)
        return _train(
            tiny_mlp(),
            data,
            batch_size=8,
            steps=10,
            noise_multiplier=1.0,
            lr=0.1,
            generator=torch.Generator().manual_seed(seed),
        ).state_dict

    first, again, other = run(7), run(7), run(8)

    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_fedprox_step_is_decoupled_and_shrinks_the_update() -> None:
    model, data = tiny_mlp(), blobs(n=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    plain = _train(model, data, lr=0.5)
    proximal = _train(model, data, lr=0.5, proximal_mu=0.4)  # w -= lr * mu * (w - w_global)

    for key, start in before.items():
        torch.testing.assert_close(
            proximal.state_dict[key] - start, (1 - 0.5 * 0.4) * (plain.state_dict[key] - start)
        )


def test_sample_rate_is_what_opacus_uses_when_batch_size_does_not_divide_n() -> None:
    result = _train(tiny_mlp(), blobs(n=50), batch_size=8, steps=3, noise_multiplier=1.0)

    assert sample_rate_for(50, 8) == 1 / 7
    assert result.history == [(1.0, 1 / 7, 3)]


def test_plan_steps_counts_logical_batches() -> None:
    assert plan_steps(num_examples=100, batch_size=30, local_epochs=2, local_steps=None) == 8
    assert plan_steps(num_examples=100, batch_size=30, local_epochs=None, local_steps=5) == 5
    with pytest.raises(ConfigError, match="exactly one"):
        plan_steps(num_examples=100, batch_size=30, local_epochs=1, local_steps=5)
    with pytest.raises(ConfigError, match="exactly one"):
        plan_steps(num_examples=100, batch_size=30, local_epochs=None, local_steps=None)
    with pytest.raises(ConfigError, match="0"):
        plan_steps(num_examples=100, batch_size=30, local_epochs=0, local_steps=None)


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)),
        nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)),
        GradSampleModule(nn.Sequential(nn.Linear(4, 2))),
    ],
)
def test_incompatible_models_are_rejected(model: nn.Module) -> None:
    with pytest.raises(ModelError):
        check_model(model)


def test_auto_mode_picks_ghost_on_cpu_only_when_every_layer_has_a_norm_sampler() -> None:
    conv_only = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2), nn.Flatten())

    assert choose_grad_sample_mode(tiny_mlp(), "auto", CPU) == "ghost"
    assert choose_grad_sample_mode(tiny_cnn(), "auto", CPU) == "hooks"
    assert choose_grad_sample_mode(conv_only, "auto", CPU) == "hooks"
    assert choose_grad_sample_mode(tiny_mlp(), "auto", torch.device("cuda")) == "hooks"
    assert choose_grad_sample_mode(tiny_mlp(), "hooks", CPU) == "hooks"
    assert choose_grad_sample_mode(tiny_cnn(), "ghost", CPU) == "ghost"


def test_ghost_clipping_is_never_used_for_a_model_with_an_embedding() -> None:
    """Opacus 1.6's ghost clipping crashes on an empty Poisson batch with nn.Embedding."""
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))
    assert choose_grad_sample_mode(model, "auto", CPU) == "hooks"
    with pytest.raises(ConfigError, match="Embedding"):
        choose_grad_sample_mode(model, "ghost", CPU)
