"""What the server sees: masked vectors look uniform and far from the inputs; shares stay below threshold."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from fedsys.errors import ProtocolError
from fedsys.secagg import Record, RoundContext, SecAggParams, run_local_round
from fedsys.secagg.encoding import quantization_step, quantize
from fedsys.secagg.messages import MaskedInputReply, SetupRequest, UnmaskReply
from fedsys.secagg.shamir import decode_share, reconstruct_secret

CONTEXT = RoundContext(run_id=5, round=1)


def _observe(
    num_clients: int, length: int, drop_after: dict[int, int] | None = None
) -> tuple[dict[type, dict[int, Record]], list[np.ndarray], list[float], SecAggParams]:
    rng = np.random.default_rng(7)
    updates = [rng.uniform(-1.0, 1.0, length) for _ in range(num_clients)]
    weights = [float(w) for w in rng.integers(1, 50, num_clients)]
    params = SecAggParams(max_weight=50.0, clip_range=2.0, quant_bits=16)
    seen: dict[type, dict[int, Record]] = {}

    def record_all(kind: type, client: int, record: Record) -> Record:
        seen.setdefault(kind, {})[client] = record
        return record

    run_local_round(
        updates, weights, rng=rng, params=params, context=CONTEXT, drop_after=drop_after, intercept=record_all
    )
    return seen, updates, weights, params


def test_masked_vector_is_far_from_the_quantised_update_and_looks_uniform() -> None:
    seen, updates, weights, params = _observe(num_clients=10, length=2000)
    ring_bits = SetupRequest.from_record(seen[SetupRequest][1]).ring_bits
    modulus, step = (
        float(2**ring_bits),
        quantization_step(clip_range=params.clip_range, quant_bits=params.quant_bits),
    )

    def ring_distance(vector: NDArray[np.float64], target: NDArray[np.float64]) -> NDArray[np.float64]:
        distance: NDArray[np.float64] = np.abs(vector - target) % modulus
        return np.minimum(distance, modulus - distance)

    for client, record in seen[MaskedInputReply].items():
        masked = MaskedInputReply.from_record(record).masked_input[:-1].astype(np.float64)
        scaled = updates[client - 1] * weights[client - 1] / params.max_weight
        grid_value = (scaled + params.clip_range) / step
        unmasked = quantize(scaled, clip_range=2.0, quant_bits=16, rng=np.random.default_rng(0)).values
        assert np.all(ring_distance(unmasked.astype(np.float64), grid_value) <= 1)  # control: q(x) is close
        assert np.mean(ring_distance(masked, grid_value) > 1e3) > 0.99  # 1e3 x the one-step bound
        assert abs(float(np.mean(masked)) / modulus - 0.5) < 0.05


def test_server_never_receives_both_share_kinds_for_one_client() -> None:
    seen, *_ = _observe(num_clients=10, length=8, drop_after={2: 2, 7: 3})
    replies = [UnmaskReply.from_record(record) for record in seen[UnmaskReply].values()]

    b_owners = {owner for reply in replies for owner in reply.b_shares}
    s_owners = {owner for reply in replies for owner in reply.s_shares}

    assert s_owners == {2}  # dropped after sharing keys, before sending its masked input
    assert 7 in b_owners  # sent its masked input, then dropped: its self mask is unmasked
    assert not b_owners & s_owners


def test_threshold_minus_one_shares_do_not_reconstruct_a_self_mask_seed() -> None:
    seen, *_ = _observe(num_clients=10, length=8)
    threshold = SetupRequest.from_record(seen[SetupRequest][1]).threshold
    shares = {
        holder: decode_share(UnmaskReply.from_record(record).b_shares[1])
        for holder, record in seen[UnmaskReply].items()
    }
    few = dict(sorted(shares.items())[: threshold - 1])
    enough = dict(sorted(shares.items())[:threshold])

    with pytest.raises(ProtocolError, match=f"need {threshold} shares"):
        reconstruct_secret(few, threshold=threshold, secret_length=32)
    assert len(reconstruct_secret(enough, threshold=threshold, secret_length=32)) == 32
