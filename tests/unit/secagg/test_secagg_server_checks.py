"""The server's checks: clients with too few live share holders are dropped (repeatedly), a round with
fewer than ``min-survivors`` contributors aborts, and a secret with fewer than t live holders aborts the
round before any client reveals a share."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsys.errors import AbortedRoundError, ConfigError
from fedsys.secagg import (
    AdvertiseKeysReply,
    MaskedInputRequest,
    Record,
    RoundContext,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    SetupRequest,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
    run_local_round,
)

CONTEXT = RoundContext(run_id=21, round=3)


def _core(graph: Mapping[int, frozenset[int]], alive: set[int], threshold: int) -> set[int]:
    """Reference: the largest subset in which every member has >= t - 1 members among its neighbours."""
    core = set(alive)
    while True:
        weak = {u for u in core if len(graph[u] & core) + 1 < threshold}
        if not weak:
            return core
        core -= weak


def _one_pass(graph: Mapping[int, frozenset[int]], alive: set[int], threshold: int) -> set[int]:
    return {u for u in alive if len(graph[u] & alive) + 1 >= threshold}


def _inputs(num_clients: int, length: int = 4) -> tuple[list[np.ndarray], list[float]]:
    rng = np.random.default_rng(5)
    return [rng.uniform(-1, 1, length) for _ in range(num_clients)], [1.0 + u for u in range(num_clients)]


def _watch(seen: dict[type, dict[int, Record]]):  # noqa: ANN202 - a local intercept
    def intercept(kind: type, client: int, record: Record) -> Record:
        seen.setdefault(kind, {})[client] = record
        return record

    return intercept


def _graph_seen_by_live_clients(seen: Mapping[type, Mapping[int, Record]]) -> dict[int, frozenset[int]]:
    """Neighbour lists as delivered in the setup requests (a client silent from the start sees none)."""
    requests = (SetupRequest.from_record(record) for record in seen[SetupRequest].values())
    return {r.recipient: frozenset(r.neighbours) for r in requests}


def _keys_of(server: SecAggServer, replying: set[int]) -> dict[int, AdvertiseKeysReply]:
    requests = server.setup_requests()
    return {u: SecAggClient(u).advertise_keys(requests[u]) for u in sorted(replying)}


def test_server_drops_a_client_whose_live_neighbourhood_is_below_t() -> None:
    ids = list(range(1, 17))
    server = SecAggServer(
        ids, context=CONTEXT, vector_length=2, params=SecAggParams(max_weight=1.0, degree=4)
    )
    threshold = server.threshold  # 5 holders, t = 3: each client needs 2 live neighbours
    victim = 1
    silent = set(sorted(server.graph[victim])[:3])  # leaves the victim one live neighbour

    requests = server.receive_keys(_keys_of(server, set(ids) - silent))

    assert threshold == 3
    assert victim not in requests
    assert set(requests) == _core(server.graph, set(ids) - silent, threshold)
    assert all(len(r.peer_keys) + 1 >= threshold for r in requests.values())


def test_server_peels_repeatedly_until_every_live_client_has_t_holders() -> None:
    ids = list(range(1, 17))
    server = SecAggServer(
        ids, context=CONTEXT, vector_length=2, params=SecAggParams(max_weight=1.0, degree=4)
    )
    cascades = (
        set(silent)
        for silent in itertools.combinations(ids, 3)
        if _one_pass(server.graph, set(ids) - set(silent), server.threshold)
        != _core(server.graph, set(ids) - set(silent), server.threshold)
    )
    silent = next(cascades)  # exists in every circulant 4-regular graph on 16 nodes
    expected = _core(server.graph, set(ids) - silent, server.threshold)

    requests = server.receive_keys(_keys_of(server, set(ids) - silent))

    assert set(requests) == expected
    assert {u: set(r.peer_keys) for u, r in requests.items()} == {
        u: server.graph[u] & expected for u in expected
    }


@settings(max_examples=20, deadline=None)
@given(
    silent_at_keys=st.sets(st.integers(1, 16), max_size=6),
    silent_at_shares=st.sets(st.integers(1, 16), max_size=5),
)
def test_every_stage_keeps_exactly_the_clients_with_t_live_holders(
    silent_at_keys: set[int], silent_at_shares: set[int]
) -> None:
    updates, weights = _inputs(16)
    params = SecAggParams(max_weight=20.0, degree=4, min_survivors=4)
    drop_after = {u: 1 for u in silent_at_shares} | {u: 0 for u in silent_at_keys}
    seen: dict[type, dict[int, Record]] = {}

    try:
        result = run_local_round(
            updates, weights, rng=np.random.default_rng(0), params=params, context=CONTEXT,
            drop_after=drop_after, intercept=_watch(seen),
        )  # fmt: skip
    except AbortedRoundError:
        result = None
    graph = _graph_seen_by_live_clients(seen)
    after_keys = _core(graph, set(graph), 3)
    after_shares = _core(graph, after_keys - silent_at_shares, 3)

    if len(after_keys) < 4:
        assert result is None and ShareKeysRequest not in seen
        return
    for u, record in seen[ShareKeysRequest].items():  # delivered to clients still answering
        assert u in after_keys
        assert set(ShareKeysRequest.from_record(record).peer_keys) == graph[u] & after_keys
    assert set(seen[ShareKeysRequest]) == after_keys - silent_at_shares
    if len(after_shares) < 4:
        assert result is None and MaskedInputRequest not in seen
        return
    assert result is not None and set(result.contributors) == after_shares
    for u, record in seen[MaskedInputRequest].items():
        assert set(MaskedInputRequest.from_record(record).envelopes) == graph[u] & after_shares
    assert set(seen[MaskedInputRequest]) == after_shares


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_fewer_than_min_survivors_contributors_abort_above_the_threshold(stage: int) -> None:
    updates, weights = _inputs(10)  # complete graph: t = 6, so 7 survivors could unmask
    params = SecAggParams(max_weight=20.0, min_survivors=8)
    seen: dict[type, dict[int, Record]] = {}

    with pytest.raises(AbortedRoundError, match="at least 8"):
        run_local_round(
            updates, weights, rng=np.random.default_rng(0), params=params, context=CONTEXT,
            drop_after={2: stage, 5: stage, 9: stage}, intercept=_watch(seen),
        )  # fmt: skip
    assert UnmaskReply not in seen


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_exactly_min_survivors_contributors_release_the_aggregate(stage: int) -> None:
    updates, weights = _inputs(10)
    params = SecAggParams(max_weight=20.0, min_survivors=8)

    result = run_local_round(
        updates, weights, rng=np.random.default_rng(0), params=params, context=CONTEXT,
        drop_after={2: stage, 9: stage},
    )  # fmt: skip

    assert result.contributors == (1, 3, 4, 5, 6, 7, 8, 10)


def test_min_survivors_defaults_to_the_threshold() -> None:
    server = SecAggServer(range(1, 11), context=CONTEXT, vector_length=2, params=SecAggParams(max_weight=1.0))

    assert (server.threshold, server.min_survivors) == (6, 6)


@pytest.mark.parametrize(
    ("min_survivors", "participants"), [(1, 5), (0, 5), (6, 5), (11, 10)], ids=lambda v: str(v)
)
def test_invalid_min_survivors_is_rejected(min_survivors: int, participants: int) -> None:
    with pytest.raises(
        ConfigError, match=f"min-survivors {'must be' if min_survivors < 2 else min_survivors}"
    ):
        SecAggServer(
            range(1, participants + 1),
            context=CONTEXT,
            vector_length=2,
            params=SecAggParams(max_weight=1.0, min_survivors=min_survivors),
        )


def test_min_survivors_equal_to_participants_is_allowed() -> None:
    server = SecAggServer(
        range(1, 6), context=CONTEXT, vector_length=2, params=SecAggParams(max_weight=1.0, min_survivors=5)
    )

    assert server.min_survivors == 5


def test_secret_with_fewer_than_t_live_holders_aborts_before_any_share_is_revealed() -> None:
    updates, weights = _inputs(5)  # complete graph: 5 holders, t = 3
    params = SecAggParams(max_weight=20.0, min_survivors=2)
    seen: dict[type, dict[int, Record]] = {}

    with pytest.raises(AbortedRoundError):
        run_local_round(
            updates, weights, rng=np.random.default_rng(0), params=params, context=CONTEXT,
            drop_after={1: 2, 2: 2, 3: 2}, intercept=_watch(seen),
        )  # fmt: skip

    assert MaskedInputRequest in seen  # the round got as far as masking ...
    assert UnmaskRequest not in seen and UnmaskReply not in seen  # ... and no share left a client


def test_the_holder_check_runs_on_the_server_itself() -> None:
    ids = [1, 2, 3, 4, 5]
    server = SecAggServer(
        ids, context=CONTEXT, vector_length=2, params=SecAggParams(max_weight=1.0, min_survivors=2)
    )
    clients = {u: SecAggClient(u) for u in ids}
    keys = {u: clients[u].advertise_keys(r) for u, r in server.setup_requests().items()}
    shares = {u: clients[u].share_keys(r) for u, r in server.receive_keys(keys).items()}
    requests = server.receive_shares(shares)
    rng = np.random.default_rng(0)
    masked = {u: clients[u].mask_input(requests[u], update=np.zeros(2), weight=1.0, rng=rng) for u in (4, 5)}

    with pytest.raises(AbortedRoundError):
        server.receive_masked_inputs(masked)
