"""Malformed client replies never reach the algorithm: whatever a version does with the sender (reject the
batch or drop the sender), a bad key, envelope or vector is never routed on or summed."""

from __future__ import annotations

import numpy as np
import pytest

from fedsys.errors import ProtocolError
from fedsys.secagg import (
    AdvertiseKeysReply,
    MaskedInputReply,
    PeerKeys,
    Record,
    RoundContext,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    ShareKeysReply,
    run_local_round,
)

CONTEXT = RoundContext(run_id=31, round=2)


def _server_and_keys() -> tuple[SecAggServer, dict[int, SecAggClient], dict[int, AdvertiseKeysReply]]:
    server = SecAggServer(range(1, 7), context=CONTEXT, vector_length=3, params=SecAggParams(max_weight=5.0))
    clients = {u: SecAggClient(u) for u in range(1, 7)}
    keys = {u: clients[u].advertise_keys(r) for u, r in server.setup_requests().items()}
    return server, clients, keys


def test_setup_requests_are_issued_once_per_round() -> None:
    server, _, keys = _server_and_keys()
    server.receive_keys(keys)

    with pytest.raises(ProtocolError, match="expected stage"):
        server.setup_requests()


@pytest.mark.parametrize(
    "bad_keys",
    [
        lambda keys: keys[1],  # a copy of another client's keys
        lambda keys: PeerKeys(keys[2].encryption[:-1], keys[2].masking),  # a short key
        lambda keys: PeerKeys(keys[2].encryption, keys[2].encryption),  # one key for both purposes
    ],
    ids=["copied", "short", "reused"],
)
def test_malformed_public_keys_are_never_forwarded(bad_keys) -> None:  # noqa: ANN001
    server, _, replies = _server_and_keys()
    keys = {u: reply.keys for u, reply in replies.items()}
    replies[2] = AdvertiseKeysReply(context=CONTEXT, keys=bad_keys(keys))

    try:
        requests = server.receive_keys(replies)
    except ProtocolError:
        return
    forwarded = [
        k for r in requests.values() for p in r.peer_keys.values() for k in (p.encryption, p.masking)
    ]
    assert all(len(k) == 32 for k in forwarded)
    assert len(forwarded) == len(set(forwarded)) or 2 not in requests


def test_an_envelope_of_the_wrong_length_is_never_routed() -> None:
    server, clients, keys = _server_and_keys()
    shares = {u: clients[u].share_keys(r) for u, r in server.receive_keys(keys).items()}
    envelopes = dict(shares[3].envelopes)
    envelopes[4] = envelopes[4][:-1]
    shares[3] = ShareKeysReply(CONTEXT, envelopes)

    try:
        requests = server.receive_shares(shares)
    except ProtocolError:
        return
    assert all(len(e) == len(shares[1].envelopes[2]) for r in requests.values() for e in r.envelopes.values())


def test_a_masked_vector_of_the_wrong_shape_is_never_summed() -> None:
    rng = np.random.default_rng(2)
    updates, weights = [rng.uniform(-1, 1, 20) for _ in range(8)], [float(w) for w in range(1, 9)]

    def shorten(kind: type, client: int, record: Record) -> Record:
        if kind is not MaskedInputReply or client != 4:
            return record
        reply = MaskedInputReply.from_record(record)
        return MaskedInputReply(reply.context, reply.masked_input[:-1], reply.failed_peers).to_record()

    try:
        result = run_local_round(updates, weights, rng=rng, context=CONTEXT, intercept=shorten)
    except ProtocolError:
        return
    members = [u - 1 for u in result.contributors]
    expected = sum(weights[i] * updates[i] for i in members) / sum(weights[i] for i in members)
    assert 4 not in result.contributors
    assert np.max(np.abs(result.average - expected)) <= result.mean_error_bound
