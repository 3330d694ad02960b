"""The client-level audit (canary clients, Andrew et al. ICLR 2024) of client-level distributed DP.

The guard runs the real holder and server round code in-process (tests/unit/audit/client_rounds.py)
on a small FedProx Synthetic scenario: with negligible noise the attack must have power; at the
scenario's epsilon the lower bound must not exceed the holders' ledgers; with the noise shares
removed (the ledgers still charging them) the guard must fail. The canary behaviour must exist
only at simulated clients the harness designates.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from client_rounds import audit_in_process
from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss

from fedsys.audit.client_canaries import canary_direction, make_client_canaries
from fedsys.audit.client_level import client_scores, gaussian_fit_epsilon
from fedsys.config import RunConfig
from fedsys.errors import ConfigError
from fedsys.models import build_model, to_arrays
from fedsys.node.distributed import canary_update

SCENARIO = Path(__file__).parents[3] / "simulations" / "synthetic-client-dp.toml"
GUARD_CANARIES = 20
# 20 canaries can show at most ~1.24 at 95%: the guard runs at a small epsilon so a bug shows
GUARD_EPSILON = 0.5


def _guard_config(epsilon: float = 8.0) -> RunConfig:
    return RunConfig.from_toml(SCENARIO).replace(
        {"num-rounds": 10, "simulation.num-clients": 20, "dp.target-epsilon": epsilon}
    )


def test_with_negligible_noise_the_client_level_attack_has_power(tmp_path: Path) -> None:
    result = audit_in_process(_guard_config(), tmp_path, canaries=GUARD_CANARIES, no_dp=True)

    assert result.epsilon_lower_bound > 0.5 and result.correct == result.guesses
    assert result.level == "client" and result.epsilon_estimate is not None and result.epsilon_estimate > 5


@pytest.mark.parametrize("epsilon", [8.0, GUARD_EPSILON])
def test_with_dp_on_the_lower_bound_stays_below_the_ledgers(tmp_path: Path, epsilon: float) -> None:
    result = audit_in_process(_guard_config(epsilon), tmp_path, canaries=GUARD_CANARIES)

    assert 0 < result.epsilon <= epsilon
    assert not result.violated and result.epsilon_lower_bound <= result.epsilon


def test_a_build_without_client_level_noise_shares_fails_the_guard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "fedsys.secagg.ddp.sample_skellam", lambda mu, size, rng: np.zeros(size, dtype=np.int64)
    )
    result = audit_in_process(_guard_config(GUARD_EPSILON), tmp_path, canaries=GUARD_CANARIES)

    assert result.epsilon <= GUARD_EPSILON and result.violated


def test_the_gaussian_fit_matches_dp_accountings_gaussian_mechanism() -> None:
    inside, outside = np.array([2.0, 4.0]), np.array([-1.0, 1.0])  # pooled sd sqrt(2), shift 3
    included = np.array([True, True, False, False])
    mu = 3 / math.sqrt(2)

    estimate = gaussian_fit_epsilon(np.concatenate([inside, outside]), included, delta=1e-5)

    oracle = GaussianPrivacyLoss(standard_deviation=1 / mu)  # sensitivity 1
    assert oracle.get_delta_for_epsilon(estimate) == pytest.approx(1e-5, rel=1e-4)
    assert oracle.get_delta_for_epsilon(0.99 * estimate) > 1.01e-5
    assert gaussian_fit_epsilon(np.concatenate([outside, inside]), included, delta=1e-5) == 0.0
    with pytest.raises(ConfigError, match="two canaries included"):
        gaussian_fit_epsilon(np.zeros(3), np.array([True, False, False]), delta=1e-5)


def test_scores_read_the_canary_directions_from_the_released_models() -> None:
    canaries = make_client_canaries(count=4, names=["w"], dim=64, holders=4, rng=np.random.default_rng(1))
    u = canaries.directions
    releases = {0: np.zeros(64), 1: u[0] + u[1], 2: u[0] + u[1] + 0.5 * u[2]}
    cohorts = [[1], [1], [2], [2]]

    scores = client_scores(releases, canaries, cohorts)

    assert scores["cohort-alignment"][:3] == pytest.approx([1.0, 1.0, 0.5], abs=0.3)
    assert scores["update-alignment"] == pytest.approx(u @ (u[0] + u[1] + 0.5 * u[2]))


def _canary_file(tmp_path: Path, names: list[str], dim: int):  # type: ignore[no-untyped-def]
    canaries = make_client_canaries(count=4, names=names, dim=dim, holders=4, rng=np.random.default_rng(0))
    path = canaries.save(tmp_path / "holders.npz", holders_only=True)
    return canaries, path


def test_only_a_simulated_client_the_harness_designates_plays_a_canary(tmp_path: Path) -> None:
    from fedsys.node.settings import holder_settings

    weights = to_arrays(build_model("logreg", (8,), 2))
    names = list(weights)
    canaries, path = _canary_file(tmp_path, names, sum(a.size for a in weights.values()))
    config = RunConfig().replace({"model": "logreg", "dp.mode": "distributed", "dp.level": "client",
                                  "dp.max-grad-norm": 0.3, "audit-client-canaries": str(path)})  # fmt: skip
    slot = int(canaries.partitions[canaries.included][0])
    out_slot = int(canaries.partitions[~canaries.included][0])
    virtual = {"partition-id": 0, "num-partitions": 4}

    played = canary_update(config, holder_settings(virtual, config, partition=slot), names)
    excluded = canary_update(config, holder_settings(virtual, config, partition=out_slot), names)
    deployed = {
        "data-path": str(tmp_path / "hospital.csv"),
        "max-epsilon": 5.0,
    }  # a real holder's node config
    real = canary_update(config, holder_settings(deployed, config, partition=slot), names)

    assert played is not None and np.linalg.norm(played) == pytest.approx(0.3)
    assert played / 0.3 == pytest.approx(canaries.directions[canaries.included][0])
    assert excluded is None and real is None  # a real holder never consults the file
    assert canary_direction(path, out_slot, names) is None


def test_client_canary_counts_out_of_range_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"--canaries must be in \[2, 5\]"):
        make_client_canaries(count=6, names=["w"], dim=3, holders=5, rng=np.random.default_rng(0))
