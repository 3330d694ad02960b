"""Dirac gradient canaries: chosen on idle coordinates, injected into the real Opacus step, found."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import opacus.optimizers.optimizer as dp_optimizer
import opacus.optimizers.optimizer_fast_gradient_clipping as ghost_optimizer
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedsys.audit.central import audit_central_white_box
from fedsys.audit.gradient_canaries import (
    GradientCanaries,
    Injector,
    coordinate_activity,
    injecting,
    make_gradient_canaries,
)
from fedsys.audit.result import AuditResult
from fedsys.config import RunConfig
from fedsys.errors import ConfigError
from fedsys.privacy import dpsgd
from fedsys.privacy.dpsgd import TrainingMode

SCENARIO = Path(__file__).parents[3] / "simulations" / "mnist-5k.toml"
FEATURES, IDLE, CLASSES, RECORDS = 6, (4, 5), 3, 40
LR, CLIP, BATCH = 0.5, 1.0, 8


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(RECORDS, FEATURES, generator=generator)
    x[:, list(IDLE)] = 0.0  # features no record uses: their weights get no real gradient
    return TensorDataset(x, torch.randint(0, CLASSES, (RECORDS,), generator=generator))


def _idle_canaries() -> GradientCanaries:
    weight = [c * FEATURES + j for c in range(CLASSES) for j in IDLE]  # flat index of weight[c, j]
    included = np.array([True, False, True, False, True, False])
    return GradientCanaries(np.array(weight), included, CLIP)


def _train(injector: Injector, *, steps: int, mode: TrainingMode = "hooks") -> None:
    model = nn.Sequential(nn.Linear(FEATURES, CLASSES))
    with injecting(injector):
        dpsgd.train_dp_sgd(
            model=model,
            train_set=_data(),
            noise_multiplier=0.0,
            max_grad_norm=CLIP,
            batch_size=BATCH,
            steps=steps,
            lr=LR,
            momentum=0.0,
            proximal_mu=0.0,
            grad_sample_mode=mode,
            accountant="rdp",
            prior_history=[],
            device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(1),
        )


def test_canaries_take_the_least_active_coordinates() -> None:
    model = nn.Sequential(nn.Linear(FEATURES, CLASSES))
    x, y = _data().tensors

    activity = coordinate_activity(model, x, y)
    canaries = make_gradient_canaries(activity, count=6, max_grad_norm=CLIP, rng=np.random.default_rng(0))

    assert sorted(canaries.coordinate.tolist()) == _idle_canaries().coordinate.tolist()
    assert (activity[canaries.coordinate] == 0).all()
    assert (np.delete(activity, canaries.coordinate) > 0).all()


def test_canary_count_is_checked() -> None:
    with pytest.raises(ConfigError, match="got 99"):
        make_gradient_canaries(np.zeros(21), count=99, max_grad_norm=CLIP, rng=np.random.default_rng(0))


def test_bad_rate_and_coordinates_are_refused() -> None:
    with pytest.raises(ConfigError, match="got 0.0"):
        Injector(_idle_canaries(), sample_rate=0.0)
    outside = GradientCanaries(np.array([0, 999]), np.array([True, False]), CLIP)
    with pytest.raises(ConfigError, match=r"\(999\) exceeds the model's 21 parameters"):
        _train(Injector(outside, sample_rate=1.0), steps=1)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_every_step_canary_moves_its_coordinate_by_one_clipped_gradient(mode: TrainingMode) -> None:
    injector = Injector(_idle_canaries(), sample_rate=1.0)

    _train(injector, steps=5, mode=mode)

    moved = np.stack(injector.steps)
    unit = LR * CLIP / injector.expected_batch_size  # Opacus divides the sum by the expected batch
    assert injector.expected_batch_size == int(RECORDS / dpsgd.steps_per_epoch(RECORDS, BATCH))
    assert moved.shape == (5, 6)
    np.testing.assert_allclose(moved[:, [0, 2, 4]], -unit, rtol=1e-5)
    assert (moved[:, [1, 3, 5]] == 0).all()
    assert dpsgd._make_private.__module__ == "fedsys.privacy.dpsgd"  # the wrapper is gone after the block


def test_sampled_canary_moves_by_zero_or_one_clipped_gradient() -> None:
    injector = Injector(_idle_canaries(), sample_rate=0.5)

    _train(injector, steps=40)

    moved = np.stack(injector.steps)[:, [0, 2, 4]]
    unit = LR * CLIP / injector.expected_batch_size
    hit = np.isclose(moved, -unit, rtol=1e-5)
    assert (hit | (moved == 0)).all()
    assert 0.3 < hit.mean() < 0.7


def _white_box(*, dp: bool, rounds: int) -> AuditResult:
    config = RunConfig.from_toml(SCENARIO).replace(
        {"num-rounds": rounds, "seed": 0, "dp.enabled": dp, "dp.target-epsilon": 1.0}
    )
    return audit_central_white_box(config, canaries=300, audit_seed=3)


def test_white_box_audit_finds_the_canaries_without_noise() -> None:
    result = _white_box(dp=False, rounds=4)

    assert result.epsilon_lower_bound > 2.0, result


def test_white_box_audit_stays_below_the_accountant() -> None:
    result = _white_box(dp=True, rounds=4)

    assert result.epsilon == pytest.approx(1.0, rel=0.05), result
    assert not result.violated, result


@pytest.fixture
def zero_noise(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real = dp_optimizer._generate_noise

    def no_noise(
        std: float, reference: torch.Tensor, generator: object = None, secure_mode: bool = False
    ) -> torch.Tensor:
        silent: torch.Tensor = real(0.0, reference, generator, secure_mode)
        return silent

    for module in (dp_optimizer, ghost_optimizer):
        monkeypatch.setattr(module, "_generate_noise", no_noise)
    yield


@pytest.mark.usefixtures("zero_noise")
def test_white_box_audit_catches_removed_noise() -> None:
    result = _white_box(dp=True, rounds=4)

    assert result.epsilon == pytest.approx(1.0, rel=0.05), result
    assert result.violated, result
