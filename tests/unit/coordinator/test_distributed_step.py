"""The server's step from a decoded distributed-DP sum: DP-FedSGD (sample level), DP-FedAvg (client level)."""

from __future__ import annotations

import numpy as np
import pytest

from fedsys.config import RunConfig
from fedsys.coordinator.secure import _fedsgd_step
from fedsys.privacy.distributed_round import rotation_seed
from fedsys.secagg.ddp import encode_records, make_encoding
from fedsys.secagg.prg import ring_mask

WEIGHTS = {"w": np.zeros((3, 4), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
ROWS = np.random.default_rng(0).normal(size=(6, 15)) * 0.1  # inside the clip: no clipping


def _ring_sum(enc, rows):  # type: ignore[no-untyped-def]
    total = encode_records(rows, enc, rotation_seed=rotation_seed("ab", 2), rng=np.random.default_rng(1))
    return total.view(np.uint64) & ring_mask(enc.ring_bits)


@pytest.mark.parametrize("level", ["sample", "client"])
def test_the_step_is_minus_lr_times_the_mean_gradient_or_the_mean_update(level: str) -> None:
    config = RunConfig().replace(
        {"dp.mode": "distributed", "dp.level": level, "train.lr": 2.0, "train.batch-size": 3}
    )
    enc = make_encoding(dim=15, clip=10.0, gamma=1e6, noise_mu_total=1.0, min_survivors=2, max_summands=6,
                        max_contributors=2)  # fmt: skip
    step = _fedsgd_step(_ring_sum(enc, ROWS), enc, WEIGHTS, config, "ab", 2, contributors=2)
    flat = np.concatenate([step["w"].ravel(), step["b"].ravel()])
    expected = -2.0 * ROWS.sum(axis=0) / (3 * 2) if level == "sample" else ROWS.sum(axis=0) / 2
    np.testing.assert_allclose(flat, expected, atol=1e-5)
    assert step["w"].shape == (3, 4) and step["w"].dtype == np.float32
