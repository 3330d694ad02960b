"""Malicious clients against SecAgg+: false accusations and garbage replies at every stage.

The accusation attack (issue "SecAgg+ that survives malicious clients and a lying server"): colluding
clients report that they could not open honest peers' envelopes. A server that trusts such reports
drops the accused and releases a sum over the victim and the colluders only, from which the colluders
subtract their own updates. The server must decide dropouts only from what it observed.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest

from fedsys.errors import AbortedRoundError
from fedsys.secagg import (
    AdvertiseKeysReply,
    AggregateResult,
    MaskedInputReply,
    Record,
    RoundContext,
    ShareKeysReply,
    UnmaskReply,
    run_local_round,
)
from fedsys.secagg.local import Intercept

CONTEXT = RoundContext(run_id=9, round=1)


def _inputs(num_clients: int, length: int = 24) -> tuple[list[np.ndarray], list[float]]:
    rng = np.random.default_rng(4)
    updates = [rng.uniform(-1.0, 1.0, length) for _ in range(num_clients)]
    return updates, [float(w) for w in rng.integers(1, 20, num_clients)]


def _run(updates: list[np.ndarray], weights: list[float], intercept: Intercept) -> AggregateResult:
    return run_local_round(
        updates, weights, rng=np.random.default_rng(2), context=CONTEXT, intercept=intercept
    )


def _expected(result: AggregateResult, updates: list[np.ndarray], weights: list[float]) -> np.ndarray:
    members = [u - 1 for u in result.contributors]
    return sum(weights[i] * updates[i] for i in members) / sum(weights[i] for i in members)


def _accuse(accusations: dict[int, list[int]]) -> Intercept:
    """Colluders rewrite their stage-3 reply to claim the honest peers' envelopes did not open."""

    def intercept(kind: type, client: int, record: Record) -> Record:
        if kind is MaskedInputReply and client in accusations:
            return record | {"failed-peers": accusations[client]}
        return record

    return intercept


def test_false_accusations_do_not_isolate_the_victim() -> None:
    updates, weights = _inputs(5)  # complete graph, 5 holders, t = 3
    colluders, victim = (4, 5), 1

    result = _run(updates, weights, _accuse({4: [2], 5: [3]}))

    # The colluders subtract their own weighted updates from the released sum.
    own = sum(weights[c - 1] * updates[c - 1] for c in colluders)
    recovered = (result.weighted_sum - own) / (result.total_weight - sum(weights[c - 1] for c in colluders))
    assert result.contributors == (1, 2, 3, 4, 5)
    assert np.max(np.abs(recovered - updates[victim - 1])) > 0.1  # the victim's update is not exposed
    assert np.max(np.abs(result.average - _expected(result, updates, weights))) <= result.mean_error_bound


def test_one_client_accusing_all_its_neighbours_neither_excludes_them_nor_aborts() -> None:
    updates, weights = _inputs(7)

    result = _run(updates, weights, _accuse({7: [1, 2, 3, 4, 5, 6]}))

    assert result.contributors == tuple(range(1, 8)) and result.excluded == ()
    assert np.max(np.abs(result.average - _expected(result, updates, weights))) <= result.mean_error_bound


def _garbage(kind_wanted: type, sender: int, change: Callable[[Record], Record]) -> Intercept:
    def intercept(kind: type, client: int, record: Record) -> Record:
        return change(record) if kind is kind_wanted and client == sender else record

    return intercept


def _same_keys(record: Record) -> Record:
    return record | {"masking-key": record["encryption-key"]}


def _short_key(record: Record) -> Record:
    return record | {"masking-key": b"\x01" * 31}


def _low_order_key(record: Record) -> Record:
    return record | {"encryption-key": bytes(32)}  # X25519 small-order point: agreement gives 0


def _short_envelope(record: Record) -> Record:
    envelopes = list(record["envelopes"])  # type: ignore[arg-type]
    return record | {"envelopes": [envelopes[0][:-1], *envelopes[1:]]}


def _missing_envelope(record: Record) -> Record:
    return record | {"recipients": list(record["recipients"])[1:], "envelopes": list(record["envelopes"])[1:]}  # type: ignore[arg-type]


def _out_of_ring(record: Record) -> Record:
    vector = np.array(record["masked-input"], dtype=np.uint64)
    vector[0] = np.uint64(2**63)
    return record | {"masked-input": vector}


def _short_vector(record: Record) -> Record:
    return record | {"masked-input": np.array(record["masked-input"], dtype=np.uint64)[:-1]}


def _bad_share(record: Record) -> Record:
    shares = list(record["b-shares"])  # type: ignore[arg-type]
    return record | {"b-shares": [shares[0][:-1], *shares[1:]]}


def _wrong_share(record: Record) -> Record:
    shares = list(record["b-shares"])  # type: ignore[arg-type]
    value = (int.from_bytes(shares[0], "big") + 1).to_bytes(len(shares[0]), "big")
    return record | {"b-shares": [value, *shares[1:]]}


def _wrong_context(record: Record) -> Record:
    return record | {"round": 99}


GARBAGE = [
    (AdvertiseKeysReply, _same_keys, False),
    (AdvertiseKeysReply, _short_key, False),
    (AdvertiseKeysReply, _low_order_key, False),
    (AdvertiseKeysReply, _wrong_context, False),
    (ShareKeysReply, _short_envelope, False),
    (ShareKeysReply, _missing_envelope, False),
    (MaskedInputReply, _out_of_ring, False),
    (MaskedInputReply, _short_vector, False),
    (UnmaskReply, _bad_share, True),
    (UnmaskReply, _wrong_share, True),
]


@pytest.mark.parametrize(("kind", "change", "contributes"), GARBAGE, ids=[c.__name__ for _, c, _ in GARBAGE])
def test_a_client_sending_garbage_is_dropped_and_the_rest_aggregate(
    kind: type, change: Callable[[Record], Record], contributes: bool
) -> None:
    updates, weights = _inputs(8)

    result = _run(updates, weights, _garbage(kind, 3, change))

    assert result.excluded == (3,)
    # a bad share at unmask comes after the sender's masked input, which still counts
    assert (3 in result.contributors) == contributes
    assert len(result.contributors) == (8 if contributes else 7)
    assert np.max(np.abs(result.average - _expected(result, updates, weights))) <= result.mean_error_bound


def test_a_well_formed_but_undecryptable_envelope_only_costs_its_sender_that_holder() -> None:
    updates, weights = _inputs(8)

    def garbage_to_one(record: Record) -> Record:
        envelopes = list(record["envelopes"])  # type: ignore[arg-type]
        return record | {"envelopes": [os.urandom(len(envelopes[0])), *envelopes[1:]]}

    result = _run(updates, weights, _garbage(ShareKeysReply, 3, garbage_to_one))

    assert result.contributors == tuple(range(1, 9))
    assert np.max(np.abs(result.average - _expected(result, updates, weights))) <= result.mean_error_bound


def test_undecryptable_envelopes_to_most_holders_abort_with_nothing_released() -> None:
    updates, weights = _inputs(8)  # 8 holders, t = 5: 4 unreadable envelopes leave 4 < t

    def garbage_to_four(record: Record) -> Record:
        envelopes = list(record["envelopes"])  # type: ignore[arg-type]
        return record | {"envelopes": [os.urandom(len(e)) if i < 4 else e for i, e in enumerate(envelopes)]}

    with pytest.raises(AbortedRoundError, match=r"\[3\]"):
        _run(updates, weights, _garbage(ShareKeysReply, 3, garbage_to_four))
