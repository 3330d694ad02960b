"""Distributed DP inside SecAgg+: clients' noisy integer vectors are summed exactly in the ring,
and the server learns only the sum (with every contributor's noise share in it)."""

from __future__ import annotations

import numpy as np
import pytest

from fedsys.errors import ModelError, ProtocolError
from fedsys.secagg import SecAggClient, SecAggParams
from fedsys.secagg.ddp import add_noise_share, decode_sum, encode_records, make_encoding
from fedsys.secagg.local import run_local_round
from fedsys.secagg.prg import ring_mask
from fedsys.secagg.primitives import RoundContext
from fedsys.secagg.server import SecAggServer

DIM, CLIENTS, RECORDS = 40, 5, 30
SEED = bytes(32)


def _encoding(threshold: int = 3):  # type: ignore[no-untyped-def]
    return make_encoding(
        dim=DIM, clip=1.0, gamma=200.0, noise_mu_total=5e4, min_survivors=threshold,
        max_summands=CLIENTS * RECORDS, max_contributors=CLIENTS,
    )  # fmt: skip


def _clients_inputs(enc, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    grads = [rng.normal(size=(RECORDS, DIM)) for _ in range(CLIENTS)]
    clean = [encode_records(g, enc, rotation_seed=SEED, rng=rng) for g in grads]
    noisy = [add_noise_share(c, enc, noise_rng=np.random.default_rng(100 + i)) for i, c in enumerate(clean)]
    return grads, clean, noisy


def _params(enc, threshold: int = 3) -> SecAggParams:  # type: ignore[no-untyped-def]
    return SecAggParams(
        max_weight=1.0, threshold=threshold, integer_ring_bits=enc.ring_bits, integer_scale=enc.gamma
    )


def test_the_secure_sum_is_exactly_the_ring_sum_of_the_noisy_vectors() -> None:
    enc = _encoding()
    _, _, noisy = _clients_inputs(enc)
    result = run_local_round(noisy, [1.0] * CLIENTS, rng=np.random.default_rng(0), params=_params(enc))
    expected = np.zeros(enc.padded_dim, dtype=np.uint64)
    for vector in noisy:
        expected = (expected + vector) & ring_mask(enc.ring_bits)
    assert result.ring_sum is not None and result.contributors == tuple(range(1, CLIENTS + 1))
    np.testing.assert_array_equal(result.ring_sum, expected)
    assert result.average.size == 0 and result.total_weight == 0.0


def test_the_decoded_sum_is_the_clipped_gradients_plus_noise_of_the_stated_size() -> None:
    enc = _encoding()
    grads, _, noisy = _clients_inputs(enc)
    result = run_local_round(noisy, [1.0] * CLIENTS, rng=np.random.default_rng(0), params=_params(enc))
    assert result.ring_sum is not None
    decoded = decode_sum(result.ring_sum, enc, rotation_seed=SEED)
    clipped = sum((g / np.maximum(1.0, np.linalg.norm(g, axis=1))[:, None]).sum(axis=0) for g in grads)
    error = decoded - clipped
    # five shares of mu_total / 3 each: std sqrt(2 * 5 / 3 * mu_total) in ring units, plus rounding
    std = np.sqrt(2 * CLIENTS / 3 * enc.noise_mu_total) / enc.gamma
    assert np.std(error) == pytest.approx(std, rel=0.35)
    assert np.abs(error).max() < 6 * std


def test_a_client_that_drops_before_masking_is_simply_not_in_the_sum() -> None:
    enc = _encoding()
    _, _, noisy = _clients_inputs(enc)
    result = run_local_round(
        noisy, [1.0] * CLIENTS, rng=np.random.default_rng(0), params=_params(enc), drop_after={2: 2}
    )
    expected = np.zeros(enc.padded_dim, dtype=np.uint64)
    for i, vector in enumerate(noisy, start=1):
        if i != 2:
            expected = (expected + vector) & ring_mask(enc.ring_bits)
    assert result.contributors == (1, 3, 4, 5)
    np.testing.assert_array_equal(result.ring_sum, expected)


def test_the_server_sees_only_masked_vectors_never_a_clients_noisy_input() -> None:
    enc = _encoding()
    _, _, noisy = _clients_inputs(enc)
    seen: list[np.ndarray] = []

    def spy(kind: type, client: int, record: dict) -> dict:  # type: ignore[type-arg]
        if "masked-input" in record:
            seen.append(np.asarray(record["masked-input"]))
        return record

    run_local_round(noisy, [1.0] * CLIENTS, rng=np.random.default_rng(0), params=_params(enc), intercept=spy)
    assert len(seen) == CLIENTS
    for masked, vector in zip(seen, noisy, strict=True):
        assert np.mean(masked == vector) < 0.01  # uniformly masked in Z_2^k
        assert np.mean(masked != vector) > 0.99


def _mask_requests(params: SecAggParams, length: int):  # type: ignore[no-untyped-def]
    server = SecAggServer([1, 2, 3], context=RoundContext(0, 1), vector_length=length, params=params)
    clients = {u: SecAggClient(u) for u in (1, 2, 3)}
    keys = {u: clients[u].advertise_keys(r) for u, r in server.setup_requests().items()}
    shares = {u: clients[u].share_keys(r) for u, r in server.receive_keys(keys).items()}
    return clients[1], server.receive_shares(shares)[1]


def test_a_client_refuses_a_real_valued_update_in_an_integer_round() -> None:
    enc = _encoding()
    client, request = _mask_requests(_params(enc, 2), enc.padded_dim)
    with pytest.raises(ProtocolError, match="integer inputs"):
        client.mask_input(request, update=np.zeros(enc.padded_dim), weight=1.0, rng=np.random.default_rng(0))


def test_a_client_refuses_an_integer_input_in_a_real_valued_round() -> None:
    client, request = _mask_requests(SecAggParams(max_weight=1.0, threshold=2), 8)
    with pytest.raises(ProtocolError, match="real-valued"):
        client.mask_integer_input(request, encoded=np.zeros(8, dtype=np.uint64))


def test_a_client_refuses_an_integer_input_outside_the_ring() -> None:
    enc = _encoding()
    client, request = _mask_requests(_params(enc, 2), enc.padded_dim)
    bad = np.full(enc.padded_dim, 1 << enc.ring_bits, dtype=np.uint64)
    with pytest.raises(ModelError, match="outside"):
        client.mask_integer_input(request, encoded=bad)
