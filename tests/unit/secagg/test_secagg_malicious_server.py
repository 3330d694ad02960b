"""A lying server against malicious-mode SecAgg+ (signed keys + ConsistencyCheck, Bonawitz et al. 2017).

Each attack drives honest clients with messages a malicious server could send and checks that they
refuse before revealing any share: Sybil keys, substituted keys, different survivor sets for different
clients, a threshold too low for the malicious bound, and an unmask request contradicting the signed set.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsys.errors import ProtocolError
from fedsys.secagg import (
    ConsistencyReply,
    ConsistencyRequest,
    Identity,
    PeerKeys,
    RoundContext,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    ShareKeysRequest,
    UnmaskRequest,
    generate_identity,
    run_local_round,
)
from fedsys.secagg.graph import malicious_threshold

CONTEXT = RoundContext(run_id=13, round=4)
MALICIOUS = SecAggParams(max_weight=10.0, mode="malicious")


def _pki(num_clients: int) -> dict[int, Identity]:
    return {u: generate_identity() for u in range(1, num_clients + 1)}


def _clients(identities: dict[int, Identity]) -> dict[int, SecAggClient]:
    trusted = frozenset(i.public for i in identities.values())
    return {u: SecAggClient(u, identity=i, trusted_peers=trusted) for u, i in identities.items()}


def _to_share_stage(num_clients: int = 7):  # noqa: ANN202 - a test builder
    identities = _pki(num_clients)
    server = SecAggServer(list(identities), context=CONTEXT, vector_length=4, params=MALICIOUS)
    clients = _clients(identities)
    keys = {u: clients[u].advertise_keys(r) for u, r in server.setup_requests().items()}
    return server, clients, server.receive_keys(keys)


def _to_consistency(num_clients: int = 7):  # noqa: ANN202 - a test builder
    server, clients, requests = _to_share_stage(num_clients)
    shares = {u: clients[u].share_keys(r) for u, r in requests.items()}
    rng = np.random.default_rng(0)
    masked = {
        u: clients[u].mask_input(r, update=np.full(4, 0.25), weight=1.0, rng=rng)
        for u, r in server.receive_shares(shares).items()
    }
    return server, clients, server.receive_masked_inputs_for_check(masked)


def test_malicious_mode_round_matches_plaintext_and_uses_the_malicious_threshold() -> None:
    rng = np.random.default_rng(3)
    updates = [rng.uniform(-1, 1, 16) for _ in range(9)]
    weights = [float(w) for w in rng.integers(1, 10, 9)]
    params = SecAggParams(max_weight=10.0, mode="malicious")

    result = run_local_round(
        updates, weights, rng=rng, params=params, context=CONTEXT, identities=_pki(9), drop_after={2: 2, 5: 3}
    )

    expected = sum(weights[u - 1] * updates[u - 1] for u in result.contributors) / sum(
        weights[u - 1] for u in result.contributors
    )
    assert result.contributors == (1, 3, 4, 5, 6, 7, 8, 9)
    assert np.max(np.abs(result.average - expected)) <= result.mean_error_bound
    assert malicious_threshold(9) == 7  # floor(9 * 4/3 / 2) + 1


def test_injected_sybil_key_is_refused_before_anything_is_shared() -> None:
    identities = _pki(7)
    server = SecAggServer(list(range(1, 9)), context=CONTEXT, vector_length=4, params=MALICIOUS)
    clients = _clients(identities)  # trust the 7 real holders only
    sybil = SecAggClient(8, identity=generate_identity(), trusted_peers=frozenset({b"server"}))
    setup = server.setup_requests()
    keys = {u: clients[u].advertise_keys(setup[u]) for u in identities}
    keys[8] = sybil.advertise_keys(setup[8])  # properly self-signed, by an identity nobody trusts

    requests = server.receive_keys(keys)

    with pytest.raises(ProtocolError, match="not among this holder's trusted peers"):
        clients[1].share_keys(requests[1])


def test_substituted_key_is_refused() -> None:
    _, clients, requests = _to_share_stage()
    peer = requests[1].peer_keys[2]
    swapped = PeerKeys(bytes(reversed(peer.encryption)), peer.masking, peer.identity, peer.signature)

    with pytest.raises(ProtocolError, match="not signed by its identity"):
        clients[1].share_keys(ShareKeysRequest(CONTEXT, 1, {**requests[1].peer_keys, 2: swapped}))


def test_a_peer_shown_another_cohort_is_refused() -> None:
    identities = _pki(7)
    clients = _clients(identities)
    seven = SecAggServer(list(identities), context=CONTEXT, vector_length=4, params=MALICIOUS)
    eight = SecAggServer(list(range(1, 9)), context=CONTEXT, vector_length=4, params=MALICIOUS)
    setup = seven.setup_requests()
    keys = {u: clients[u].advertise_keys(setup[u]) for u in range(1, 7)}
    keys[7] = clients[7].advertise_keys(eight.setup_requests()[7])  # 7 is told of a ghost client 8

    requests = seven.receive_keys(keys)  # an honest server already drops 7; a lying one relays it
    relayed = ShareKeysRequest(CONTEXT, 1, {**requests[1].peer_keys, 7: keys[7].keys})

    assert 7 in seven.rejections
    with pytest.raises(ProtocolError, match="not signed by its identity"):
        clients[1].share_keys(relayed)


def test_different_survivor_sets_for_two_groups_make_every_client_refuse_to_unmask() -> None:
    server, clients, requests = _to_consistency()  # 7 clients, t = 5
    full = requests[1].survivors
    set_a, set_b = full, tuple(u for u in full if u != 7)  # group B is told 7 dropped
    group_a, group_b = (1, 2, 3, 7), (4, 5, 6)
    signed = {u: clients[u].sign_survivors(ConsistencyRequest(CONTEXT, u, set_a)) for u in group_a}
    signed |= {u: clients[u].sign_survivors(ConsistencyRequest(CONTEXT, u, set_b)) for u in group_b}
    signatures = {u: r.signature for u, r in signed.items()}

    for u in group_a:  # asked for b-shares of 7
        with pytest.raises(ProtocolError, match="signed the survivor set"):
            clients[u].unmask(UnmaskRequest(CONTEXT, u, set_a, (), signatures))
    for u in group_b:  # asked for s-shares of 7
        with pytest.raises(ProtocolError, match="signed the survivor set"):
            clients[u].unmask(UnmaskRequest(CONTEXT, u, set_b, (7,), signatures))


def test_unmask_request_contradicting_the_signed_set_is_refused() -> None:
    server, clients, requests = _to_consistency()
    replies = {u: clients[u].sign_survivors(r) for u, r in requests.items()}
    unmask = server.receive_consistency(replies)
    honest = unmask[1]

    with pytest.raises(ProtocolError, match="contradicts the signed survivor set"):
        clients[1].unmask(
            UnmaskRequest(CONTEXT, 1, tuple(u for u in honest.survivors if u != 2), (2,), honest.signatures)
        )


def test_forged_signatures_are_not_counted() -> None:
    server, clients, requests = _to_consistency()
    replies = {u: clients[u].sign_survivors(r) for u, r in requests.items()}
    honest = server.receive_consistency(replies)[1]
    forged = {u: bytes(64) for u in honest.signatures} | {1: honest.signatures[1]}

    with pytest.raises(ProtocolError, match="only 1 survivors signed"):
        clients[1].unmask(UnmaskRequest(CONTEXT, 1, honest.survivors, honest.dropped, forged))


def test_a_threshold_below_the_malicious_bound_is_refused_at_setup() -> None:
    identities = _pki(7)
    params = SecAggParams(max_weight=10.0, threshold=4)  # honest-majority t for 7, below 2n/3
    server = SecAggServer(list(identities), context=CONTEXT, vector_length=4, params=params)
    client = _clients(identities)[1]

    with pytest.raises(ProtocolError, match="needs threshold >= 5"):
        client.advertise_keys(server.setup_requests()[1])


def test_a_server_in_semi_honest_mode_gets_no_shares_from_a_malicious_mode_client() -> None:
    server, clients, requests = _to_consistency()
    replies = {u: clients[u].sign_survivors(r) for u, r in requests.items()}
    unsigned = server.receive_consistency(replies)[1]

    with pytest.raises(ProtocolError, match="only 0 survivors signed"):
        clients[1].unmask(UnmaskRequest(CONTEXT, 1, unsigned.survivors, unsigned.dropped, {}))


def test_client_state_survives_a_restart_between_stages_in_malicious_mode() -> None:
    server, clients, requests = _to_consistency()
    identities = {u: c.identity for u, c in clients.items()}
    trusted = clients[1].trusted_peers
    replies: dict[int, ConsistencyReply] = {}
    for u, request in requests.items():
        restored = SecAggClient.from_record(
            clients[u].to_record(), identity=identities[u], trusted_peers=trusted
        )
        replies[u] = restored.sign_survivors(request)
        clients[u] = SecAggClient.from_record(
            restored.to_record(), identity=identities[u], trusted_peers=trusted
        )
    unmask = server.receive_consistency(replies)

    result = server.receive_unmask({u: clients[u].unmask(r) for u, r in unmask.items()})

    assert np.max(np.abs(result.average - 0.25)) <= result.mean_error_bound
