"""Hostile plaintext replies: each drops its sender, the round goes on with the honest rest."""

import io
import logging

import numpy as np
import pytest
from coordinator_builders import (
    WEIGHTS,
    npy_bytes,
    raw_array,
    reply_with,
    run_plain,
    update,
    with_array,
)
from flwr.app import Array
from numpy.lib import format as npformat

from fedsys.wire import STATUS_BUDGET, to_record

HONEST = {1: update(1.0, 30), 2: update(3.0, 10)}  # weighted mean 1.5


def _npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, w=np.zeros((2, 2), np.float32))
    return buffer.getvalue()


def _huge_header() -> bytes:
    """A valid .npy header claiming 10^12 float64 values, followed by only 8 bytes."""
    buffer = io.BytesIO()
    npformat.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    return buffer.getvalue() + b"\0" * 8


ATTACKS = {
    "list-valued epsilon": reply_with(to_record(WEIGHTS), {"num-examples": 10, "epsilon": [1.0, 2.0]}),
    "list-valued num-examples": reply_with(to_record(WEIGHTS), {"num-examples": [10, 10]}),
    "list-valued train-loss": reply_with(to_record(WEIGHTS), {"num-examples": 10, "train-loss": [0.1]}),
    "NaN train-loss": reply_with(to_record(WEIGHTS), {"num-examples": 10, "train-loss": float("nan")}),
    "NaN epsilon": reply_with(to_record(WEIGHTS), {"num-examples": 10, "epsilon": float("nan")}),
    "negative epsilon": reply_with(to_record(WEIGHTS), {"num-examples": 10, "epsilon": -1.0}),
    "NaN num-examples": update(0.0, float("nan")),
    "infinite num-examples": update(0.0, float("inf")),
    "negative num-examples": update(0.0, -39),
    "zero num-examples": update(0.0, 0),
    "num-examples above the public cap": update(0.0, 10_001),
    "string-dtype array": with_array("w", Array(np.array([["a", "b"], ["c", "d"]]))),
    "integer-dtype array": with_array("w", Array(np.zeros((2, 2), np.int64))),
    "bool-dtype array": with_array("w", Array(np.zeros((2, 2), bool))),
    "complex-dtype array": with_array("w", Array(np.zeros((2, 2), np.complex128))),
    "not .npy bytes": with_array("w", raw_array(b"\x93NUMPY garbage")),
    "pickle-looking bytes": with_array("w", raw_array(b"\x80\x04K\x01.")),
    "an .npz archive": with_array("w", raw_array(_npz_bytes())),
    "a truncated .npy": with_array("w", raw_array(npy_bytes(np.zeros((2, 2), np.float32))[:-3])),
    "trailing bytes after the .npy": with_array(
        "w", raw_array(npy_bytes(np.zeros((2, 2), np.float32)) + b"x")
    ),
    "a header claiming 10^12 values": with_array("w", raw_array(_huge_header())),
    "a torch serialisation type": with_array(
        "w", Array(dtype="float32", shape=(2, 2), stype="torch.Tensor", data=b"")
    ),
    "wrong shape": update(0.0, 10, w=np.zeros((3, 2), np.float32)),
    "infinite values": update(np.inf, 10),
    "float64 beyond the float32 range": with_array("w", Array(np.full((2, 2), 1e300))),
    "unknown status": reply_with(to_record(WEIGHTS), {"num-examples": 10}, {"status": "maybe"}),
    "list-valued epsilon in a refusal": reply_with(None, {"epsilon": [7.5]}, {"status": STATUS_BUDGET}),
    "no arrays": reply_with(None, {"num-examples": 10}),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_hostile_reply_drops_its_sender_and_the_honest_mean_is_released(attack, caplog):
    caplog.set_level(logging.WARNING, logger="fedsys")

    outcome = run_plain({**HONEST, 3: ATTACKS[attack]})

    assert outcome.status == "ok"
    assert outcome.failed == [3] and outcome.succeeded == [1, 2] and outcome.declined == []
    assert np.allclose(outcome.delta["w"], 1.5) and np.allclose(outcome.delta["b"], 1.5)
    assert 3 not in outcome.epsilons and outcome.train_losses == []
    assert any("node 3" in r.getMessage() for r in caplog.records)  # the sender is named


def test_a_negative_count_no_longer_turns_a_mean_of_one_and_a_half_into_sixty():
    outcome = run_plain({**HONEST, 3: update(0.0, -39)})

    assert np.allclose(outcome.delta["w"], 1.5)


def test_the_public_cap_is_secagg_max_weight_and_is_inclusive():
    outcome = run_plain(
        {1: update(1.0, 50), 2: update(4.0, 50), 3: update(100.0, 51)}, **{"secagg.max-weight": 50}
    )

    assert outcome.succeeded == [1, 2] and outcome.failed == [3]
    assert np.allclose(outcome.delta["w"], 2.5)


def test_a_holder_that_keeps_its_size_private_weighs_as_one_example():
    outcome = run_plain({1: update(1.0, None), 2: update(4.0, 2)})

    assert outcome.succeeded == [1, 2]
    assert np.allclose(outcome.delta["w"], 3.0)


def test_float64_big_endian_and_fortran_order_updates_are_accepted_as_floats():
    wide = np.asfortranarray(np.full((2, 2), 2.0, dtype=">f8"))
    outcome = run_plain({1: update(1.0, 10), 2: with_array("w", Array(wide))})

    assert outcome.succeeded == [1, 2]
    assert outcome.delta["w"].dtype == np.float32 and np.allclose(outcome.delta["w"], 1.5)


def test_a_reply_claiming_another_sender_is_dropped():
    outcome = run_plain({**HONEST, 3: update(0.0, 10)}, spoofed={3: 2})

    assert outcome.failed == [3] and np.allclose(outcome.delta["w"], 1.5)


def test_a_refusal_with_a_valid_epsilon_is_still_a_refusal():
    outcome = run_plain({**HONEST, 3: reply_with(None, {"epsilon": 7.5}, {"status": STATUS_BUDGET})})

    assert outcome.declined == [3] and outcome.epsilons == {3: 7.5} and outcome.failed == []
