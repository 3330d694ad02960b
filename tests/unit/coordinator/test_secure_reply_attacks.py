"""Hostile SecAgg+ stage replies: each drops its sender, the round completes with the honest rest."""

import io
import logging

import numpy as np
import pytest
from coordinator_builders import npy_bytes, raw_array
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from numpy.lib import format as npformat
from secure_builders import SecAggNode, run_secure

from fedsys.wire import MASKED, METRICS, STATUS, STATUS_BUDGET


def _masked(array: Array):
    def tamper(stage: str, reply: Message) -> Message:
        if stage == "mask":
            reply.content[MASKED] = ArrayRecord({"masked-input": array})
        return reply

    return tamper


def _metrics(stage_name: str, **metrics: object):
    def tamper(stage: str, reply: Message) -> Message:
        if stage == stage_name:
            reply.content[METRICS] = MetricRecord(metrics)  # type: ignore[arg-type]
        return reply

    return tamper


def _declines_with(**metrics: object):
    def tamper(stage: str, reply: Message) -> Message:
        if stage != "setup":
            return reply
        content = {STATUS: ConfigRecord({"status": STATUS_BUDGET}), METRICS: MetricRecord(metrics)}
        return Message(RecordDict(content), reply_to=reply)  # type: ignore[arg-type]

    return tamper


def _npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros(7, np.uint64))
    return buffer.getvalue()


def _huge() -> bytes:
    buffer = io.BytesIO()
    npformat.write_array_header_1_0(buffer, {"descr": "<u8", "fortran_order": False, "shape": (10**12,)})
    return buffer.getvalue() + b"\0" * 8


ATTACKS = {
    "masked input not .npy": _masked(raw_array(b"not an npy payload", "uint64", (7,))),
    "masked input an .npz archive": _masked(raw_array(_npz(), "uint64", (7,))),
    "masked input truncated": _masked(raw_array(npy_bytes(np.zeros(7, np.uint64))[:-1], "uint64", (7,))),
    "masked input claiming 10^12 values": _masked(raw_array(_huge(), "uint64", (10**12,))),
    "masked input of strings": _masked(Array(np.array(["a"] * 7))),
    "masked input of floats": _masked(Array(np.zeros(7))),
    "masked input a torch tensor": _masked(Array(dtype="uint64", shape=(7,), stype="torch.Tensor", data=b"")),
    "list-valued train-loss": _metrics("mask", **{"train-loss": [0.5]}),
    "NaN train-loss": _metrics("mask", **{"train-loss": float("nan")}),
    "list-valued epsilon": _metrics("mask", epsilon=[1.0]),
    "infinite epsilon": _metrics("mask", epsilon=float("inf")),
    "negative epsilon": _metrics("mask", epsilon=-2.0),
    "refusal with a list-valued epsilon": _declines_with(epsilon=[7.5]),
    "refusal with a NaN epsilon": _declines_with(epsilon=float("nan")),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_hostile_stage_reply_drops_its_sender_and_the_honest_sum_is_released(attack, caplog):
    caplog.set_level(logging.WARNING, logger="fedsys")
    honest = {node: SecAggNode(value) for node, value in zip((1, 2, 3, 4), (1.0, 1.0, 3.0, 3.0), strict=True)}

    outcome = run_secure({**honest, 5: SecAggNode(100.0, ATTACKS[attack])})

    assert outcome.status == "ok", outcome.message
    assert outcome.succeeded == [1, 2, 3, 4] and 5 in outcome.failed and outcome.declined == []
    assert np.allclose(outcome.delta["w"], 2.0, atol=1e-3) and np.allclose(outcome.delta["b"], 2.0, atol=1e-3)
    assert 5 not in outcome.epsilons and outcome.train_losses == []
    assert any("node 5" in r.getMessage() for r in caplog.records)


def test_a_refusal_with_a_valid_epsilon_is_a_refusal():
    honest = {node: SecAggNode(1.0) for node in (1, 2, 3)}

    outcome = run_secure({**honest, 4: SecAggNode(9.0, _declines_with(epsilon=7.5))})

    assert outcome.status == "ok" and outcome.declined == [4] and outcome.epsilons == {4: 7.5}
    assert np.allclose(outcome.delta["w"], 1.0, atol=1e-3)


def test_valid_training_metrics_are_kept():
    honest = {node: SecAggNode(1.0) for node in (1, 2)}

    outcome = run_secure(
        {**honest, 3: SecAggNode(1.0, _metrics("mask", epsilon=0.5, **{"train-loss": 0.25}))}
    )

    assert outcome.succeeded == [1, 2, 3] and outcome.epsilons == {3: 0.5} and outcome.train_losses == [0.25]
