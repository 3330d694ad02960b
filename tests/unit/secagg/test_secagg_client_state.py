"""A SecAgg+ client restarted between stages (as a Flower SuperNode does) still aggregates exactly."""

import numpy as np
import pytest

from fedsys.errors import ProtocolError
from fedsys.secagg import (
    AdvertiseKeysReply,
    MaskedInputReply,
    MaskedInputRequest,
    RoundContext,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
)


def _restart(client: SecAggClient) -> SecAggClient:
    return SecAggClient.from_record(client.to_record())


def test_clients_restarted_between_every_stage_give_the_right_average():
    rng = np.random.default_rng(0)
    updates = [rng.normal(0, 0.5, 50) for _ in range(4)]
    weights = [10.0, 20.0, 30.0, 40.0]
    server = SecAggServer(
        [1, 2, 3, 4],
        context=RoundContext(run_id=9, round=2),
        vector_length=50,
        params=SecAggParams(max_weight=100.0, clip_range=4.0, quant_bits=24),
    )
    states = {u: SecAggClient(u).to_record() for u in (1, 2, 3, 4)}

    def step(requests, call, reply_type):
        replies = {}
        for u, request in requests.items():
            client = SecAggClient.from_record(states[u])
            replies[u] = reply_type.from_record(call(client, request).to_record())
            states[u] = client.to_record()
        return replies

    keys = step(
        {u: SetupRequest.from_record(r.to_record()) for u, r in server.setup_requests().items()},
        SecAggClient.advertise_keys,
        AdvertiseKeysReply,
    )
    shares = step(
        {u: ShareKeysRequest.from_record(r.to_record()) for u, r in server.receive_keys(keys).items()},
        SecAggClient.share_keys,
        ShareKeysReply,
    )
    masked = step(
        {u: MaskedInputRequest.from_record(r.to_record()) for u, r in server.receive_shares(shares).items()},
        lambda c, r: c.mask_input(
            r,
            update=updates[c.client_id - 1],
            weight=weights[c.client_id - 1],
            rng=np.random.default_rng(c.client_id),
        ),
        MaskedInputReply,
    )
    unmasked = step(
        {
            u: UnmaskRequest.from_record(r.to_record())
            for u, r in server.receive_masked_inputs(masked).items()
        },
        SecAggClient.unmask,
        UnmaskReply,
    )
    result = server.receive_unmask(unmasked)

    expected = np.average(np.stack(updates), axis=0, weights=weights)
    assert np.max(np.abs(result.average - expected)) <= result.mean_error_bound


def test_a_restarted_client_keeps_its_stage_discipline():
    client = SecAggClient(1)
    request = SetupRequest(
        context=RoundContext(run_id=1, round=1),
        recipient=1,
        neighbours=(2, 3),
        threshold=2,
        ring_bits=30,
        quant_bits=20,
        clip_range=1.0,
        vector_length=3,
        max_weight=1.0,
    )
    client.advertise_keys(request)

    restarted = _restart(client)

    with pytest.raises(ProtocolError, match="expected stage 2, got stage 0"):
        restarted.advertise_keys(request)


def test_malformed_state_is_a_protocol_error():
    record = SecAggClient(1).to_record()
    record.pop("next-stage")

    with pytest.raises(ProtocolError, match="next-stage"):
        SecAggClient.from_record(record)
