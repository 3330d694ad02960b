"""The client's own checks: it refuses a server-chosen threshold outside the honest-majority range and
aborts, before sharing or masking anything, when fewer than t share holders remain."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsys.errors import AbortedRoundError, ProtocolError
from fedsys.secagg import (
    MaskedInputRequest,
    PeerKeys,
    RoundContext,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    SetupRequest,
    ShareKeysRequest,
)
from fedsys.secagg.primitives import generate_key_pair

CONTEXT = RoundContext(run_id=11, round=4)


def _setup(*, num_neighbours: int, threshold: int, recipient: int = 1) -> SetupRequest:
    neighbours = tuple(u for u in range(1, num_neighbours + 2) if u != recipient)
    return SetupRequest(
        context=CONTEXT,
        recipient=recipient,
        neighbours=neighbours,
        threshold=threshold,
        ring_bits=32,
        quant_bits=16,
        clip_range=2.0,
        vector_length=3,
        max_weight=10.0,
    )


def _peer_keys(peers: range | list[int]) -> dict[int, PeerKeys]:
    return {v: PeerKeys(generate_key_pair().public, generate_key_pair().public) for v in peers}


@settings(max_examples=60, deadline=None)
@given(num_neighbours=st.integers(1, 12), offset=st.integers(-3, 3), above=st.booleans())
def test_client_accepts_a_threshold_only_in_the_honest_majority_range(
    num_neighbours: int, offset: int, above: bool
) -> None:
    holders = num_neighbours + 1
    threshold = (holders if above else holders // 2) + offset  # around both ends of (h / 2, h]
    request = _setup(num_neighbours=num_neighbours, threshold=threshold)
    valid = holders / 2 < threshold <= holders

    if valid:
        reply = SecAggClient(1).advertise_keys(request)
        assert reply.context == CONTEXT
    else:
        with pytest.raises(ProtocolError, match="threshold"):
            SecAggClient(1).advertise_keys(request)


@pytest.mark.parametrize(
    ("num_neighbours", "threshold"),
    [(5, 3), (5, 1), (4, 2), (9, 5), (1, 1), (5, 7), (4, 6), (5, 0), (5, -1)],
    ids=lambda v: str(v),
)
def test_client_refuses_a_server_chosen_threshold_outside_the_range(
    num_neighbours: int, threshold: int
) -> None:
    client = SecAggClient(1)

    with pytest.raises(ProtocolError, match=f"got {threshold}"):
        client.advertise_keys(_setup(num_neighbours=num_neighbours, threshold=threshold))
    with pytest.raises(ProtocolError, match="expected stage 0"):  # no state was kept
        client.share_keys(ShareKeysRequest(CONTEXT, 1, _peer_keys(range(2, 2 + num_neighbours))))


@pytest.mark.parametrize(
    "change",
    [
        {"ring_bits": 16},  # not above quant_bits: the sum would wrap
        {"ring_bits": 65},
        {"vector_length": 0},
        {"max_weight": 0.0},
        {"max_weight": float("inf")},
        {"quant_bits": 0},
        {"clip_range": -1.0},
        {"neighbours": (1, 2, 3, 4, 5)},  # itself
        {"neighbours": (2, 2, 3, 4, 5)},  # duplicate
        {"neighbours": (0, 2, 3, 4, 5)},  # not an id
    ],
    ids=lambda change: next(iter(change)),
)
def test_client_refuses_other_invalid_setups(change: dict[str, object]) -> None:
    request = dataclasses.replace(_setup(num_neighbours=5, threshold=4), **change)  # type: ignore[arg-type]

    with pytest.raises(ProtocolError, match="invalid"):
        SecAggClient(1).advertise_keys(request)


@settings(max_examples=25, deadline=None)
@given(num_neighbours=st.integers(2, 8), data=st.data())
def test_client_shares_only_with_at_least_t_holders(num_neighbours: int, data: st.DataObject) -> None:
    holders = num_neighbours + 1
    threshold = data.draw(st.integers(holders // 2 + 1, holders), label="threshold")
    live = data.draw(st.integers(0, num_neighbours), label="live peers")
    client = SecAggClient(1)
    client.advertise_keys(_setup(num_neighbours=num_neighbours, threshold=threshold))
    request = ShareKeysRequest(CONTEXT, 1, _peer_keys(range(2, 2 + live)))

    if live + 1 >= threshold:
        assert set(client.share_keys(request).envelopes) == set(range(2, 2 + live))
    else:
        with pytest.raises(AbortedRoundError, match=f"threshold is {threshold}"):
            client.share_keys(request)


def _client_at_mask_stage(num_clients: int) -> tuple[SecAggClient, MaskedInputRequest, int]:
    """Client 1 after a real share stage over a complete graph, with the request it would receive."""
    ids = list(range(1, num_clients + 1))
    server = SecAggServer(ids, context=CONTEXT, vector_length=3, params=SecAggParams(max_weight=10.0))
    clients = {u: SecAggClient(u) for u in ids}
    keys = {u: clients[u].advertise_keys(r) for u, r in server.setup_requests().items()}
    shares = {u: clients[u].share_keys(r) for u, r in server.receive_keys(keys).items()}
    return clients[1], server.receive_shares(shares)[1], server.threshold


@pytest.mark.parametrize("kept", [0, 1, 2, 3, 4, 5])
def test_client_masks_its_input_only_with_at_least_t_live_holders(kept: int) -> None:
    client, full, threshold = _client_at_mask_stage(num_clients=7)  # 7 holders, t = 4
    senders = sorted(full.envelopes)[:kept]
    request = MaskedInputRequest(CONTEXT, 1, {v: full.envelopes[v] for v in senders})
    enough = kept + 1 >= threshold

    if enough:
        assert client.admit_masked_input(request, vector_length=3) == 10.0
        reply = client.mask_input(request, update=np.zeros(3), weight=1.0, rng=np.random.default_rng(0))
        assert reply.masked_input.shape == (4,)
    else:
        with pytest.raises(AbortedRoundError, match=f"threshold is {threshold}"):
            client.admit_masked_input(request, vector_length=3)
        with pytest.raises(AbortedRoundError, match=f"threshold is {threshold}"):
            client.mask_input(request, update=np.zeros(3), weight=1.0, rng=np.random.default_rng(0))
    assert threshold == 4
