"""run_private_round: plan, reserve within the local budget, train, commit; fail closed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from privacy_builders import DataTouchedError, ExplodingDataset, blobs, open_ledger, private_round, tiny_mlp
from torch import nn

from fedsys.errors import BudgetExceededError, ConfigError
from fedsys.privacy import DPSettings, LocalBudget, compute_epsilon

DELTA = 1e-5


def _loss(
    model: nn.Module, state: dict[str, torch.Tensor] | None, data: torch.utils.data.TensorDataset
) -> float:
    if state is not None:
        model.load_state_dict(state)
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(data.tensors[0]), data.tensors[1]))


def test_refuse_raises_before_any_example_is_read(tmp_path: Path) -> None:
    untouchable = ExplodingDataset(*blobs(n=64).tensors)
    budget = LocalBudget(max_epsilon=1.0, target_delta=DELTA)

    with open_ledger(tmp_path) as ledger:
        with pytest.raises(BudgetExceededError, match="max-epsilon 1.0"):
            private_round(ledger, train_set=untouchable, budget=budget, local_steps=50)
        assert ledger.entries("data-a") == []


def test_truncate_runs_only_the_steps_that_fit(tmp_path: Path) -> None:
    model, budget = tiny_mlp(), LocalBudget(max_epsilon=4.0, target_delta=DELTA, policy="truncate")
    forward_calls: list[int] = []
    model.register_forward_pre_hook(lambda _module, args: forward_calls.append(len(args[0])))

    with open_ledger(tmp_path) as ledger:
        result = private_round(ledger, model=model, budget=budget, local_steps=500)
        [entry] = ledger.entries("data-a")

    assert result.truncated and 0 < result.steps < result.planned_steps == 500
    assert len(forward_calls) == result.steps
    assert result.epsilon_after <= 4.0
    assert (entry.status, entry.steps, entry.planned_steps) == ("committed", result.steps, 500)
    one_more = compute_epsilon([(1.0, 1 / 8, result.steps + 1)], target_delta=DELTA, accountant="rdp")
    assert one_more > 4.0


def test_truncate_with_no_room_left_raises(tmp_path: Path) -> None:
    budget = LocalBudget(max_epsilon=4.0, target_delta=DELTA, policy="truncate")
    with open_ledger(tmp_path) as ledger:
        private_round(ledger, budget=budget, local_steps=500)

        with pytest.raises(BudgetExceededError):
            private_round(ledger, budget=budget, local_steps=500, server_round=2)


def test_a_failed_round_keeps_its_reservation(tmp_path: Path) -> None:
    with open_ledger(tmp_path) as ledger:
        with pytest.raises(DataTouchedError):
            private_round(ledger, train_set=ExplodingDataset(*blobs(n=64).tensors), local_steps=7)
        [entry] = ledger.entries("data-a")

        retry = private_round(ledger, local_steps=3, server_round=2)

    assert (entry.status, entry.steps) == ("reserved", 7)
    assert retry.epsilon_before == compute_epsilon([(1.0, 1 / 8, 7)], target_delta=DELTA, accountant="rdp")
    assert retry.epsilon_after == compute_epsilon([(1.0, 1 / 8, 10)], target_delta=DELTA, accountant="rdp")


def test_spend_accumulates_over_rounds_and_restarts(tmp_path: Path) -> None:
    for server_round in range(1, 4):
        with open_ledger(tmp_path) as ledger:
            result = private_round(ledger, local_epochs=1, local_steps=None, server_round=server_round)

    assert result.steps == 8  # ceil(64 / 8)
    assert result.epsilon_after == compute_epsilon([(1.0, 1 / 8, 24)], target_delta=DELTA, accountant="rdp")


def test_the_servers_accountant_cannot_loosen_the_clients_budget(tmp_path: Path) -> None:
    history = [(1.0, 1 / 8, 40)]
    rdp = compute_epsilon(history, target_delta=DELTA, accountant="rdp")
    prv = compute_epsilon(history, target_delta=DELTA, accountant="prv")
    assert prv < rdp
    budget = LocalBudget(max_epsilon=(prv + rdp) / 2, target_delta=DELTA)  # client trusts rdp
    server_dp = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, accountant="prv")

    with open_ledger(tmp_path) as ledger:
        with pytest.raises(BudgetExceededError):
            private_round(ledger, dp=server_dp, budget=budget, local_steps=40)


def test_dp_training_reduces_loss_on_separable_data(tmp_path: Path) -> None:
    model, data = tiny_mlp(), blobs(n=256)
    initial = _loss(tiny_mlp(), None, data)

    with open_ledger(tmp_path) as ledger:
        result = private_round(
            ledger, model=model, train_set=data, batch_size=32, local_epochs=3, local_steps=None, lr=0.5
        )

    assert result.grad_sample_mode == "ghost" and result.num_examples == 256
    assert _loss(tiny_mlp(), result.state_dict, data) < 0.5 * initial
    assert result.epsilon_after < 50.0


@pytest.mark.parametrize(
    ("overrides", "echo"),
    [
        ({"lr": 0.0}, "lr"),
        ({"proximal_mu": 20.0, "lr": 0.1}, "proximal-mu"),
        ({"batch_size": 0}, "batch-size"),
    ],
)
def test_bad_hyperparameters_reserve_nothing(tmp_path: Path, overrides: dict[str, float], echo: str) -> None:
    with open_ledger(tmp_path) as ledger:
        with pytest.raises(ConfigError, match=echo):
            private_round(ledger, **overrides)  # type: ignore[arg-type]
        assert ledger.entries("data-a") == []
