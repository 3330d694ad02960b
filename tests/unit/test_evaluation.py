"""Federated evaluation sums: their layout in a SecAgg+ vector, ring capacity and server-side checks."""

import numpy as np
import pytest
import torch

from fedsys.data.dataset import ArrayDataset
from fedsys.errors import ConfigError, ProtocolError
from fedsys.evaluation import (
    LOSS_SCALE,
    EvaluationSums,
    check_sums,
    decode_section,
    encode_section,
    evaluation_sums,
    section_length,
    section_ring_bits,
    sums_from_metrics,
)
from fedsys.secagg import SecAggParams
from fedsys.secagg.local import run_local_round


def _sums(correct: int, matrix: list[list[int]], loss: float) -> EvaluationSums:
    confusion = np.array(matrix, dtype=np.int64)
    return EvaluationSums(correct, int(confusion.sum()), loss, confusion)


HOLDERS = [
    _sums(3, [[2, 1, 0], [0, 1, 0], [1, 0, 0]], 2.5),
    _sums(4, [[0, 0, 0], [1, 3, 0], [0, 0, 1]], 1.25),
    _sums(0, [[0, 0, 0], [0, 0, 0], [0, 0, 0]], 0.0),
]


def test_the_secure_sum_splits_into_the_update_average_and_the_exact_evaluation_sums():
    rng = np.random.default_rng(0)
    updates = [rng.uniform(-1, 1, 7) for _ in HOLDERS]
    bits = section_ring_bits(num_clients=3, max_examples=100, loss_bound=10.0)
    params = SecAggParams(max_weight=100, quant_bits=16, extra_length=section_length(3), min_ring_bits=bits)

    result = run_local_round(
        updates,
        [10, 20, 30],
        rng=rng,
        params=params,
        extras=[encode_section(s, ring_bits=bits) for s in HOLDERS],
    )

    assert result.extra_sum is not None
    total = decode_section(result.extra_sum, ring_bits=bits, num_classes=3)
    assert (total.correct, total.examples, total.loss) == (7, 10, 3.75)
    assert np.array_equal(total.confusion, sum(s.confusion for s in HOLDERS))
    expected = np.average(updates, axis=0, weights=[10, 20, 30])
    assert np.max(np.abs(result.average - expected)) <= result.mean_error_bound


def test_a_holder_may_not_send_an_evaluation_section_the_setup_did_not_ask_for():
    rng = np.random.default_rng(0)
    with pytest.raises(Exception, match="extra coordinates"):
        run_local_round(
            [np.zeros(4)] * 2,
            [1, 1],
            rng=rng,
            params=SecAggParams(max_weight=1, extra_length=2),
            extras=[np.zeros(3, dtype=np.uint64)] * 2,
        )


def test_a_holder_may_not_send_evaluation_coordinates_outside_the_ring():
    rng = np.random.default_rng(0)
    params = SecAggParams(max_weight=1, extra_length=2, min_ring_bits=30)
    with pytest.raises(Exception, match="extra coordinates has values outside"):
        run_local_round(
            [np.zeros(4)] * 2,
            [1, 1],
            rng=rng,
            params=params,
            extras=[np.array([1, 2**40], dtype=np.uint64)] * 2,
        )


@pytest.mark.parametrize(("clients", "max_examples", "loss_bound"), [(2, 100, 10.0), (7, 10_000, 3.0)])
def test_the_ring_holds_the_largest_possible_sums_and_one_bit_less_would_wrap(
    clients, max_examples, loss_bound
):
    bits = section_ring_bits(num_clients=clients, max_examples=max_examples, loss_bound=loss_bound)
    worst = EvaluationSums(max_examples, max_examples, max_examples * loss_bound, np.diag([max_examples, 0]))

    def total(ring_bits: int) -> EvaluationSums:
        one = encode_section(worst, ring_bits=ring_bits)
        ring = (one.astype(object) * clients) % (1 << ring_bits)
        return decode_section(np.array(ring, dtype=np.uint64), ring_bits=ring_bits, num_classes=2)

    exact = total(bits)
    assert (exact.examples, exact.loss) == (clients * max_examples, clients * max_examples * loss_bound)
    assert total(bits - 1).loss != exact.loss  # the loss coordinate is the widest
    check_sums(exact, loss_bound=loss_bound, max_examples=clients * max_examples)
    with pytest.raises(ProtocolError):  # a wrapped sum is recognised as impossible
        check_sums(total(bits - 1), loss_bound=loss_bound, max_examples=clients * max_examples)


def test_a_ring_wider_than_62_bits_is_a_clear_error():
    with pytest.raises(ConfigError, match="evaluation.loss-bound"):
        section_ring_bits(num_clients=10**6, max_examples=1e9, loss_bound=1e3)


def test_a_holders_sums_clip_each_loss_and_score_at_most_max_weight_records():
    x = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32)
    data = ArrayDataset(x, np.array([0, 1, 1, 0]), 2)
    model = torch.nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-50.0], [50.0]]))
        model.bias.zero_()

    sums = evaluation_sums(model, data, device=torch.device("cpu"), loss_bound=2.0, max_examples=3)

    # record 0 (x=0) ties: argmax 0, loss ln 2; record 1 correct; record 2 correct; record 3 never scored
    assert (sums.correct, sums.examples) == (3, 3)
    assert sums.loss == round(np.log(2) * LOSS_SCALE) / LOSS_SCALE
    assert sums.confusion.tolist() == [[1, 0], [0, 2]]
    with torch.no_grad():
        model.weight.neg_()  # every prediction now wrong with a huge loss: each clipped to 2
    wrong = evaluation_sums(model, data, device=torch.device("cpu"), loss_bound=2.0, max_examples=3)
    assert wrong.correct == 1 and wrong.loss == pytest.approx(2.0 * 2 + np.log(2), abs=1e-3)


@pytest.mark.parametrize(
    "bad",
    [
        {"eval-sum-correct": 5},  # more correct than the confusion trace
        {"eval-sum-examples": 99},  # not the confusion total
        {"eval-sum-loss": 1e6},  # above loss-bound per example
        {"eval-sum-loss": float("nan")},
        {"eval-sum-confusion": [1, 2, 3]},
        {"eval-sum-confusion": [1, 0, 0, -1]},
        {"eval-sum-correct": 1.5},
        {"eval-sum-examples": 20_000, "eval-sum-confusion": [20_000, 0, 0, 0], "eval-sum-correct": 20_000},
    ],
)
def test_malformed_plaintext_sums_are_the_senders_protocol_error(bad):
    good = {
        "eval-sum-correct": 3,
        "eval-sum-examples": 4,
        "eval-sum-loss": 2.0,
        "eval-sum-confusion": [2, 1, 0, 1],
    }

    assert sums_from_metrics(good, num_classes=2, loss_bound=10.0, max_examples=10_000) is not None
    with pytest.raises(ProtocolError):
        sums_from_metrics({**good, **bad}, num_classes=2, loss_bound=10.0, max_examples=10_000)
    assert sums_from_metrics({"epsilon": 1.0}, num_classes=2, loss_bound=10.0, max_examples=10) is None


def test_the_summary_is_accuracy_loss_and_macro_f1_of_the_pooled_counts():
    total = HOLDERS[0] + HOLDERS[1]

    summary = total.summary()

    assert summary["federated-accuracy"] == 7 / 10
    assert summary["federated-loss"] == 3.75 / 10
    assert summary["federated-examples"] == 10
    assert summary["federated-recall-1"] == 4 / 5
