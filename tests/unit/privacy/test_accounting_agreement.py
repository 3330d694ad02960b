"""What a round executes, what Opacus accounts and what the ledger records are one number.

A server chooses the batch size; for about 6% of k = ceil(n / B) Opacus used to account
1/(k-1) while the sampler ran at 1/k and the ledger recorded 1/k, so the cross-check failed
after training and the reservation stayed spent: a server could burn budgets at will.
"""

import math

import pytest
from privacy_builders import blobs, open_ledger, private_round

from fedsys.config import RunConfig
from fedsys.node.settings import holder_settings
from fedsys.node.update import _noise_multiplier
from fedsys.privacy import compute_epsilon, sample_rate_for

# k = ceil(n / B) where float makes int(1 / (1 / k)) == k - 1 (Opacus' len(DPDataLoader))
_AWKWARD = [(372, 4), (99, 1), (210, 2)]


@pytest.mark.parametrize(("n", "batch_size"), _AWKWARD)
def test_awkward_batch_sizes_train_and_charge_the_executed_rate(tmp_path, n, batch_size):
    k = math.ceil(n / batch_size)
    assert int(1 / (1 / k)) == k - 1  # the case this test is about
    ledger = open_ledger(tmp_path)

    result = private_round(ledger, train_set=blobs(n), batch_size=batch_size, local_steps=3)

    history = ledger.history("data-a")
    assert result.steps == 3
    assert [q for _, q, _ in history] == [sample_rate_for(n, batch_size)] == [1 / k]


def test_target_epsilon_is_calibrated_with_the_holders_accountant_not_the_servers(tmp_path):
    config = RunConfig().replace(
        {
            "dp.target-epsilon": 4.0,
            "dp.accountant": "prv",  # the server's choice
            "num-rounds": 10,
            "train.batch-size": 16,
            "train.local-epochs": 1,
        }
    )
    node = {"data-path": str(tmp_path / "x.csv"), "max-epsilon": 4.0, "budget-accountant": "rdp"}
    node["feature-range"] = "none"
    settings = holder_settings(node, config)

    sigma = _noise_multiplier(config, settings, num_examples=300)

    q, steps = sample_rate_for(300, 16), 10 * math.ceil(300 / 16)
    reached = compute_epsilon([(sigma, q, steps)], target_delta=1e-5, accountant="rdp")
    assert 3.9 < reached <= 4.0
