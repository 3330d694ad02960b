"""Plaintext rounds add up the evaluation sums holders send; a malformed one drops its sender only."""

import pytest
from coordinator_builders import WEIGHTS, ScriptedGrid, reply_with

from fedsys.config import RunConfig
from fedsys.coordinator.plain import plain_round
from fedsys.coordinator.secure import secagg_params
from fedsys.errors import ConfigError
from fedsys.evaluation import section_length
from fedsys.wire import to_record

_GOOD = {
    "eval-sum-correct": 3,
    "eval-sum-examples": 4,
    "eval-sum-loss": 2.0,
    "eval-sum-confusion": [2, 1, 0, 1],
}


def _round(script):
    config = RunConfig().replace({"sampling.min-clients": 2, "dp.enabled": False})
    grid = ScriptedGrid(script)
    assignment = {node: str(node) for node in script}
    return plain_round(grid, config, assignment, WEIGHTS, 1, "00ab", simulated=False, num_classes=2)  # type: ignore[arg-type]


def test_the_round_adds_up_the_sums_of_the_holders_that_send_them():
    script = {n: reply_with(to_record(WEIGHTS), {"num-examples": 10, **_GOOD}) for n in (1, 2)}
    script[3] = reply_with(to_record(WEIGHTS), {"num-examples": 10})  # keeps its evaluation private

    outcome = _round(script)

    assert outcome.succeeded == [1, 2, 3]
    record = outcome.record(1, [1, 2, 3])
    assert record["federated-examples"] == 8 and record["federated-accuracy"] == 6 / 8
    assert record["federated-loss"] == 4.0 / 8


def test_inconsistent_sums_drop_their_sender_and_the_round_goes_on():
    lying = {**_GOOD, "eval-sum-correct": 4}  # more correct than the confusion trace
    script = {n: reply_with(to_record(WEIGHTS), {"num-examples": 10, **_GOOD}) for n in (1, 2)}
    script[3] = reply_with(to_record(WEIGHTS), {"num-examples": 10, **lying})

    outcome = _round(script)

    assert outcome.status == "ok" and outcome.failed == [3] and outcome.succeeded == [1, 2]
    assert outcome.record(1, [1, 2, 3])["federated-examples"] == 8


def test_sums_that_could_wrap_the_ring_are_left_out_and_the_secure_round_trains_without_them():
    config = RunConfig().replace({"secagg.max-weight": 1e9, "evaluation.loss-bound": 1e6})

    with pytest.raises(ConfigError, match="ring"):
        secagg_params(config, num_classes=2, participants=3)
    assert secagg_params(config).extra_length == 0  # what secure_round falls back to
    assert secagg_params(RunConfig(), num_classes=2, participants=3).extra_length == section_length(2)
