"""End-to-end SecAgg+ rounds: correctness, dropouts, aborts, tampering, replay and consistency checks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pytest

from fedsys.errors import AbortedRoundError, ModelError, ProtocolError
from fedsys.secagg import (
    AggregateResult,
    MaskedInputReply,
    MaskedInputRequest,
    Record,
    RoundContext,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    ShareKeysReply,
    UnmaskRequest,
    run_local_round,
)
from fedsys.secagg.local import Intercept

CONTEXT = RoundContext(run_id=3, round=2)


def _inputs(num_clients: int, length: int = 40, seed: int = 0) -> tuple[list[np.ndarray], list[float]]:
    rng = np.random.default_rng(seed)
    updates = [rng.uniform(-1.0, 1.0, length) for _ in range(num_clients)]
    return updates, [float(w) for w in rng.integers(1, 100, num_clients)]


def _assert_matches_plaintext(
    result: AggregateResult, updates: Sequence[np.ndarray], weights: Sequence[float]
) -> None:
    members = [u - 1 for u in result.contributors]
    total_weight = sum(weights[i] for i in members)
    expected = sum(weights[i] * updates[i] for i in members) / total_weight
    assert np.max(np.abs(result.average - expected)) <= result.mean_error_bound
    assert result.total_weight == pytest.approx(total_weight, rel=1e-3)
    assert result.mean_error_bound < 1e-3  # the bound itself is meaningful


def _run(
    updates: list[np.ndarray],
    weights: list[float],
    *,
    drop_after: dict[int, int] | None = None,
    intercept: Intercept | None = None,
    context: RoundContext = CONTEXT,
) -> AggregateResult:
    rng = np.random.default_rng(1)
    return run_local_round(
        updates, weights, rng=rng, context=context, drop_after=drop_after, intercept=intercept
    )


def test_ten_clients_match_plaintext_weighted_average() -> None:
    updates, weights = _inputs(10)

    result = _run(updates, weights)

    assert result.contributors == tuple(range(1, 11))
    assert result.survivors_per_stage == (10, 10, 10, 10)
    _assert_matches_plaintext(result, updates, weights)


def test_sparse_graph_round_matches_plaintext() -> None:
    updates, weights = _inputs(30)

    result = _run(updates, weights, drop_after={4: 1, 9: 2, 17: 3})

    assert result.dropped == (4, 9)
    assert 17 in result.contributors  # sent its input, then dropped: its self mask is reconstructed
    _assert_matches_plaintext(result, updates, weights)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_up_to_n_minus_t_dropouts_after_any_stage_still_aggregate(stage: int) -> None:
    updates, weights = _inputs(10)  # complete graph: 10 holders, t = 6, so 4 may drop

    result = _run(updates, weights, drop_after={1: stage, 4: stage, 6: stage, 10: stage})

    contributed = stage == 3
    assert (1 in result.contributors) == contributed
    assert len(result.contributors) == (10 if contributed else 6)
    _assert_matches_plaintext(result, updates, weights)


def test_dropouts_spread_over_all_stages_still_aggregate() -> None:
    updates, weights = _inputs(10)

    result = _run(updates, weights, drop_after={2: 0, 3: 1, 5: 2, 8: 3})

    assert result.contributors == (1, 4, 6, 7, 8, 9, 10)
    _assert_matches_plaintext(result, updates, weights)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_fewer_than_t_survivors_abort_the_round(stage: int) -> None:
    updates, weights = _inputs(10)

    with pytest.raises(AbortedRoundError, match="aborted"):
        _run(updates, weights, drop_after={u: stage for u in (1, 2, 3, 4, 5)})


def _drive_to_unmask(
    num_clients: int = 6,
) -> tuple[SecAggServer, dict[int, SecAggClient], dict[int, UnmaskRequest]]:
    ids = list(range(1, num_clients + 1))
    server = SecAggServer(ids, context=CONTEXT, vector_length=4, params=SecAggParams(max_weight=10.0))
    clients = {u: SecAggClient(u) for u in ids}
    rng = np.random.default_rng(0)
    keys = {u: clients[u].advertise_keys(r) for u, r in server.setup_requests().items()}
    shares = {u: clients[u].share_keys(r) for u, r in server.receive_keys(keys).items()}
    masked = {
        u: clients[u].mask_input(r, update=np.zeros(4), weight=1.0, rng=rng)
        for u, r in server.receive_shares(shares).items()
    }
    return server, clients, server.receive_masked_inputs(masked)


def test_client_refuses_to_reveal_both_shares_of_one_peer() -> None:
    _, clients, requests = _drive_to_unmask()
    honest = requests[1]
    greedy = UnmaskRequest(CONTEXT, 1, honest.survivors, (*honest.dropped, 2))

    with pytest.raises(ProtocolError, match="both"):
        clients[1].unmask(greedy)


def test_client_reveals_once_so_a_second_request_cannot_get_the_other_share() -> None:
    _, clients, requests = _drive_to_unmask()
    first = clients[1].unmask(requests[1])
    second = UnmaskRequest(CONTEXT, 1, (1,), (2,))

    with pytest.raises(ProtocolError, match="finished"):
        clients[1].unmask(second)
    assert 2 in first.b_shares and not first.s_shares


def test_client_refuses_to_be_declared_dropped_while_alive() -> None:
    _, clients, _ = _drive_to_unmask()

    with pytest.raises(ProtocolError, match="declared dropped"):
        clients[1].unmask(UnmaskRequest(CONTEXT, 1, (2, 3), (1,)))


def test_server_aggregate_from_manual_drive_is_zero_for_zero_updates() -> None:
    server, clients, requests = _drive_to_unmask()

    result = server.receive_unmask({u: clients[u].unmask(r) for u, r in requests.items()})

    assert np.max(np.abs(result.average)) <= result.mean_error_bound


def _flip_first_bit(envelope: bytes) -> bytes:
    return bytes([envelope[0] ^ 1]) + envelope[1:]


def _flip_envelope(sender: int, recipients: Iterable[int]) -> Intercept:
    targets = frozenset(recipients)

    def intercept(kind: type, client: int, record: Record) -> Record:
        if kind is not ShareKeysReply or client != sender:
            return record
        reply = ShareKeysReply.from_record(record)
        envelopes = {v: _flip_first_bit(e) if v in targets else e for v, e in reply.envelopes.items()}
        return ShareKeysReply(reply.context, envelopes).to_record()

    return intercept


def test_tampered_share_costs_only_that_share_and_everyone_still_aggregates() -> None:
    updates, weights = _inputs(10)

    result = _run(updates, weights, intercept=_flip_envelope(sender=3, recipients=[5]))

    # 5's report that 3's envelope failed is not trusted against 3: 5 just holds no share of 3
    assert result.excluded == () and result.contributors == tuple(range(1, 11))
    _assert_matches_plaintext(result, updates, weights)


def test_tampering_that_leaves_fewer_than_t_valid_shares_aborts() -> None:
    updates, weights = _inputs(10)

    with pytest.raises(AbortedRoundError, match=r"\[3\]"):
        _run(updates, weights, intercept=_flip_envelope(sender=3, recipients=range(1, 11)))


def test_tampering_on_the_server_to_client_leg_is_detected_too() -> None:
    updates, weights = _inputs(10)

    def intercept(kind: type, client: int, record: Record) -> Record:
        if kind is not MaskedInputRequest or client != 2:
            return record
        request = MaskedInputRequest.from_record(record)
        envelopes = {v: _flip_first_bit(e) if v == 7 else e for v, e in request.envelopes.items()}
        return MaskedInputRequest(request.context, request.recipient, envelopes).to_record()

    result = _run(updates, weights, intercept=intercept)

    assert result.excluded == () and result.contributors == tuple(range(1, 11))
    _assert_matches_plaintext(result, updates, weights)


def _capture(kind_wanted: type, client_wanted: int, store: dict[str, Record]) -> Intercept:
    def intercept(kind: type, client: int, record: Record) -> Record:
        if kind is kind_wanted and client == client_wanted:
            store["record"] = record
        return record

    return intercept


def test_envelope_replayed_from_a_previous_round_is_rejected() -> None:
    updates, weights = _inputs(10)
    store: dict[str, Record] = {}
    _run(updates, weights, intercept=_capture(ShareKeysReply, 3, store))
    old = ShareKeysReply.from_record(store["record"])

    def replay(kind: type, client: int, record: Record) -> Record:
        if kind is not ShareKeysReply or client != 3:
            return record
        reply = ShareKeysReply.from_record(record)
        return ShareKeysReply(reply.context, {**reply.envelopes, 5: old.envelopes[5]}).to_record()

    result = _run(updates, weights, context=RoundContext(run_id=3, round=3), intercept=replay)

    assert result.excluded == () and result.contributors == tuple(range(1, 11))  # 5 lacks 3's share only
    _assert_matches_plaintext(result, updates, weights)


def test_masked_input_replayed_from_another_round_is_rejected() -> None:
    updates, weights = _inputs(10)
    store: dict[str, Record] = {}
    _run(updates, weights, intercept=_capture(MaskedInputReply, 2, store))

    def replay(kind: type, client: int, record: Record) -> Record:
        return store["record"] if kind is MaskedInputReply and client == 2 else record

    result = _run(updates, weights, context=RoundContext(run_id=3, round=3), intercept=replay)

    assert result.excluded == (2,) and "another run or round" in result.rejections[2]
    _assert_matches_plaintext(result, updates, weights)


def _shorten(record: Record) -> Record:
    reply = MaskedInputReply.from_record(record)
    return MaskedInputReply(reply.context, reply.masked_input[:-1], reply.failed_peers).to_record()


def _leave_ring(record: Record) -> Record:
    reply = MaskedInputReply.from_record(record)
    return MaskedInputReply(reply.context, reply.masked_input | np.uint64(1 << 40), ()).to_record()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (_shorten, "shape"),
        (_leave_ring, "outside"),
        (lambda r: r | {"failed-peers": [99]}, "no envelopes"),
    ],
    ids=["short-vector", "outside-ring", "unknown-failure"],
)
def test_inconsistent_masked_input_drops_only_its_sender(
    change: Callable[[Record], Record], match: str
) -> None:
    updates, weights = _inputs(10)

    def intercept(kind: type, client: int, record: Record) -> Record:
        return change(record) if kind is MaskedInputReply and client == 4 else record

    result = _run(updates, weights, intercept=intercept)

    assert result.excluded == (4,) and match in result.rejections[4]
    assert 4 not in result.contributors and len(result.contributors) == 9
    _assert_matches_plaintext(result, updates, weights)


def test_an_unparseable_reply_counts_as_a_dropout() -> None:
    updates, weights = _inputs(10)

    def intercept(kind: type, client: int, record: Record) -> Record:
        return record | {"stage": 2} if kind is MaskedInputReply and client == 4 else record

    result = _run(updates, weights, intercept=intercept)

    assert 4 in result.dropped and len(result.contributors) == 9
    _assert_matches_plaintext(result, updates, weights)


def test_server_rejects_out_of_order_calls_and_unknown_senders() -> None:
    server = SecAggServer(range(1, 6), context=CONTEXT, vector_length=4, params=SecAggParams(max_weight=1.0))
    with pytest.raises(ProtocolError, match="expected stage 0"):
        server.receive_shares({})
    server.setup_requests()
    stranger = SecAggClient(9)
    request = SecAggServer(
        range(5, 10), context=CONTEXT, vector_length=4, params=SecAggParams(max_weight=1.0)
    )
    reply = stranger.advertise_keys(request.setup_requests()[9])

    with pytest.raises(ProtocolError, match=r"unexpected clients \[9\]"):
        server.receive_keys({9: reply})


def test_aborted_server_releases_nothing_further() -> None:
    server, clients, requests = _drive_to_unmask()
    replies = {u: clients[u].unmask(r) for u, r in requests.items() if u <= 2}

    with pytest.raises(AbortedRoundError):
        server.receive_unmask(replies)
    with pytest.raises(ProtocolError, match="round over"):
        server.receive_unmask(replies)


def test_client_rejects_update_of_wrong_length() -> None:
    updates, weights = _inputs(5)
    updates[2] = updates[2][:-1]

    with pytest.raises(ModelError, match="shape"):
        _run(updates, weights)
