"""The plaintext round against a scripted Grid: bad replies are dropped, never averaged in."""

from collections.abc import Callable

import numpy as np
from coordinator_builders import WEIGHTS, ScriptedGrid
from flwr.app import Error, Message, MetricRecord, RecordDict

from fedsys.config import RunConfig
from fedsys.coordinator.plain import plain_round
from fedsys.wire import ARRAYS, METRICS, STATUS, STATUS_BUDGET, status_record, to_record


def _update(value: float, examples: int, **arrays: np.ndarray) -> Callable[[Message], Message]:
    def reply(message: Message) -> Message:
        delta = {k: np.full_like(v, value) for k, v in WEIGHTS.items()} | arrays
        content = RecordDict({ARRAYS: to_record(delta), METRICS: MetricRecord({"num-examples": examples})})
        return Message(content, reply_to=message)

    return reply


def _declined(message: Message) -> Message:
    content = RecordDict(
        {STATUS: status_record(STATUS_BUDGET, "over budget"), METRICS: MetricRecord({"epsilon": 7.5})}
    )
    return Message(content, reply_to=message)


def _crashed(message: Message) -> Message:
    return Message(Error(code=1, reason="client died"), reply_to=message)


def _run(script, **overrides):
    config = RunConfig().replace({"sampling.min-clients": 2, "dp.enabled": False, **overrides})
    grid = ScriptedGrid(script)
    assignment = {node: str(node) for node in script}
    return plain_round(grid, config, assignment, WEIGHTS, 1, "00ab", simulated=False), grid


def test_weighted_mean_of_good_updates_only():
    outcome, grid = _run(
        {
            1: _update(1.0, 30),
            2: _update(3.0, 10),
            3: _update(np.nan, 10),  # NaN update
            4: _update(0.0, 10, w=np.zeros((3, 2), np.float32)),  # wrong shape
            5: _declined,
            6: _crashed,
            7: lambda m: None,  # never answers
        },
        **{"sampling.round-timeout": 0.5},
    )

    assert np.allclose(outcome.delta["w"], 1.5) and np.allclose(outcome.delta["b"], 1.5)
    assert outcome.succeeded == [1, 2]
    assert sorted(outcome.failed) == [3, 4, 6, 7]
    assert outcome.declined == [5] and outcome.epsilons == {5: 7.5}
    assert outcome.status == "ok"
    assert all(m.content.config_records["config"]["server-round"] == 1 for m in grid.sent)


def test_too_few_good_updates_abandon_the_round_without_a_delta():
    outcome, _ = _run({1: _update(1.0, 5), 2: _crashed, 3: _declined})

    assert outcome.failed == [2]  # counted once, though its error reply came from the SuperLink

    assert outcome.status == "abandoned" and outcome.delta is None
    assert "only 1 of 3 sampled client(s) returned an update" in outcome.message


def test_the_budget_and_ledger_location_never_reach_clients():
    _, grid = _run({1: _update(1.0, 5), 2: _update(1.0, 5)}, **{"budget.max-epsilon": 1.0})

    sent = dict(grid.sent[0].content.config_records["config"])
    assert not any(k.startswith(("budget.", "ledger-dir", "out-dir")) for k in sent)
    assert "partition-id" not in sent  # deployment: nodes train on their own data
