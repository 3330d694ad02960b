"""The audit guard: a small central DP-SGD audit through fedsys' own training step.

With DP off the attack must have power (lower bound clearly above 0); with DP on the lower
bound must not exceed the accountant's epsilon. Each deliberately broken build below is patched
in and must make the guard fail (lower bound above the claimed epsilon), while the ledger
and accountant still claim the same epsilon:

- noise removed (Opacus draws zero noise; the accountant still records the noise multiplier),
- noise seeded from what the server sends (scenario seed, partition, round): the server-side
  attacker regenerates the noise and subtracts it (``noise_replay``),
- per-sample clipping disabled (noise still scaled to max-grad-norm).

Scenario: mnist-5k, logistic regression, pooled centrally, 4 releases, epsilon 1, one Dirac
canary on each of the 121 never-used pixels.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import opacus.optimizers.optimizer as dp_optimizer
import opacus.optimizers.optimizer_fast_gradient_clipping as ghost_optimizer
import pytest
import torch

from fedsys.audit.attacks import server_known_noise
from fedsys.audit.central import audit_central
from fedsys.audit.result import AuditResult
from fedsys.config import RunConfig
from fedsys.privacy import dpsgd

SCENARIO = Path(__file__).parents[3] / "simulations" / "mnist-5k.toml"
GUARD_EPSILON = 1.0
SCENARIO_SEED = 0


def _guard(*, dp: bool = True) -> AuditResult:
    config = RunConfig.from_toml(SCENARIO).replace(
        {"num-rounds": 4, "seed": SCENARIO_SEED, "dp.enabled": dp, "dp.target-epsilon": GUARD_EPSILON}
    )
    return audit_central(
        config,
        canaries=121,
        audit_seed=7,
        noise_hypotheses={"noise-replay": server_known_noise(SCENARIO_SEED, 0)},
    )


@pytest.fixture
def zero_noise(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real = dp_optimizer._generate_noise

    def no_noise(
        std: float, reference: torch.Tensor, generator: object = None, secure_mode: bool = False
    ) -> torch.Tensor:
        return real(0.0, reference, generator, secure_mode)

    for module in (dp_optimizer, ghost_optimizer):
        monkeypatch.setattr(module, "_generate_noise", no_noise)
    yield


@pytest.fixture
def server_seeded_noise(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The bug fedsys once had: noise derived from the seed and round the server sends."""
    rounds = itertools.count(1)
    real = dpsgd._split_generator
    regenerate = server_known_noise(SCENARIO_SEED, 0)

    def split(
        generator: torch.Generator | None, device: torch.device
    ) -> tuple[torch.Generator, torch.Generator]:
        sampling, _ = real(generator, device)
        return sampling, regenerate(next(rounds))

    monkeypatch.setattr(dpsgd, "_split_generator", split)
    yield


@pytest.fixture
def no_clipping(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real = dpsgd._make_private

    def unclipped(*args: object, **kwargs: object) -> object:
        private = real(*args, **kwargs)  # type: ignore[arg-type]
        assert hasattr(private.module, "max_grad_norm"), "the guard scenario trains in ghost mode"
        private.module.max_grad_norm = 1e12  # clipping factor 1; the optimizer's noise keeps max-grad-norm
        return private

    monkeypatch.setattr(dpsgd, "_make_private", unclipped)
    yield


def test_attack_has_power_without_dp() -> None:
    result = _guard(dp=False)

    assert result.epsilon_lower_bound > 1.0


def test_lower_bound_stays_below_the_accountant() -> None:
    result = _guard()

    assert result.epsilon == pytest.approx(GUARD_EPSILON, rel=0.05)
    assert not result.violated, result


@pytest.mark.usefixtures("zero_noise")
def test_guard_catches_removed_noise() -> None:
    result = _guard()

    assert result.epsilon == pytest.approx(GUARD_EPSILON, rel=0.05)  # the ledger still claims it
    assert result.violated, result


@pytest.mark.usefixtures("server_seeded_noise")
def test_guard_catches_noise_the_server_can_regenerate() -> None:
    result = _guard()

    assert result.epsilon == pytest.approx(GUARD_EPSILON, rel=0.05)
    assert result.violated, result
    assert result.attack == "noise-replay"


@pytest.mark.usefixtures("no_clipping")
def test_guard_catches_disabled_clipping() -> None:
    result = _guard()

    assert result.epsilon == pytest.approx(GUARD_EPSILON, rel=0.05)
    assert result.violated, result
