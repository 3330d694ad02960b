"""A holder's local noise floor in distributed-DP mode: its vector alone stays DP if SecAgg+ fails.

The adversary: a server that unmasks one holder's vector (the masks are broken, or it colludes
with enough other holders to reconstruct them) and knows every record. Without a floor the
holder's vector carries only its share ``mu / t`` of the noise; with its own
``ddp-local-noise-multiplier`` it carries at least that floor, whatever the server sends.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from holder_builders import N_FEATURES, ddp_setup_request, gaussian_epsilon, write_holder

from fedsys.config import RunConfig
from fedsys.errors import ConfigError
from fedsys.models import build_model, to_arrays
from fedsys.node.distributed import distributed_update
from fedsys.node.settings import holder_settings
from fedsys.privacy.distributed_round import holder_encoding, server_encoding
from fedsys.secagg.ddp import centre, make_encoding

DIM = N_FEATURES * 2 + 2  # 16 coordinates once padded
PAIRS = 32  # 512 differences: the standard deviation to within about 3% (one sigma)
RING = 40
GAMMA = 50.0
# batch 100 >= the holder's 64 training rows: every record every round, so two identical requests
# differ only by their noise (and rounding coins: variance < 16 per coordinate, against > 5,000)
CONFIG = RunConfig().replace(
    {
        "model": "logreg",
        "num-rounds": 64,
        "train.batch-size": 100,
        "dp.mode": "distributed",
        "dp.noise-multiplier": 2.0,
        "dp.bits": 20,
    }
)


def _noise_std(tmp_path: Path, server: RunConfig, **node: object) -> tuple[float, list[float]]:
    """Send the same request ``2 x PAIRS`` times; the difference of two vectors is two independent
    draws of the holder's noise. Returns its per-coordinate standard deviation in units of Delta_2
    and the local epsilon the holder reported after each round."""
    settings = holder_settings(write_holder(tmp_path, rows=80, **node), server)
    weights = to_arrays(build_model("logreg", (N_FEATURES,), 2))
    sent = [  # the same round each time: the same rotation, so the signals cancel
        distributed_update(
            server,
            settings,
            weights,
            setup=ddp_setup_request(gamma=GAMMA, ring_bits=RING),
            server_round=1,
            run_id="00ff",
        )
        for _ in range(2 * PAIRS)
    ]
    vectors = [u.encoded.astype(np.int64) for u in sent if u.encoded is not None]
    assert len(vectors) == 2 * PAIRS
    pairs = zip(vectors[::2], vectors[1::2], strict=True)
    differences = [centre((a - b) % (1 << RING), RING) for a, b in pairs]
    enc = holder_encoding(server, dim=DIM, gamma=GAMMA, ring_bits=RING, threshold=2, participants=3)
    std = float(np.std(np.concatenate(differences))) / math.sqrt(2)
    return std / enc.l2_bound, [u.metrics["ddp-local-epsilon"] for u in sent]


def test_without_a_floor_one_holders_vector_carries_only_its_share(tmp_path: Path) -> None:
    std, alone = _noise_std(tmp_path, CONFIG)
    share = CONFIG.dp.noise_multiplier / math.sqrt(2)  # t = 2: each adds half the variance
    assert std == pytest.approx(share, rel=0.15)
    # what the holder reports is the epsilon of its vectors alone (a Gaussian of std z / sqrt(t))
    assert alone[1] == pytest.approx(gaussian_epsilon(share, 1e-5, releases=2), rel=0.05)
    assert alone[-1] == pytest.approx(gaussian_epsilon(share, 1e-5, releases=len(alone)), rel=0.05)


@pytest.mark.parametrize("server_floor", [0.0, 0.5])
def test_a_holders_own_floor_is_in_its_vector_whatever_the_server_sends(
    tmp_path: Path, server_floor: float
) -> None:
    server = CONFIG.replace({"dp.local-noise-multiplier": server_floor})
    std, alone = _noise_std(tmp_path, server, **{"ddp-local-noise-multiplier": 4.0})
    assert std == pytest.approx(4.0, rel=0.15)  # the holder's floor, not the server's
    # epsilon of its vectors alone after 1, 2 and all rounds: a Skellam release is close to (and
    # never below) the Gaussian one of the same standard deviation, by an independent accountant
    for rounds in (1, 2, len(alone)):
        epsilon, gaussian = alone[rounds - 1], gaussian_epsilon(4.0, 1e-5, releases=rounds)
        assert gaussian <= epsilon <= gaussian * 1.05


def test_a_real_holder_ignores_a_floor_the_server_sends(tmp_path: Path) -> None:
    """The server's dp.local-noise-multiplier only sizes the ring; a holder's floor is its own."""
    std, _ = _noise_std(tmp_path, CONFIG.replace({"dp.local-noise-multiplier": 6.0}))
    assert std == pytest.approx(CONFIG.dp.noise_multiplier / math.sqrt(2), rel=0.15)


def test_a_virtual_holder_takes_the_scenarios_floor() -> None:
    run = CONFIG.replace({"dp.local-noise-multiplier": 3.0})
    settings = holder_settings({"partition-id": 0, "num-partitions": 2}, run)
    assert settings.simulated and settings.policy.local_noise_multiplier == 3.0


def test_the_share_is_the_larger_of_mu_over_t_and_the_floor_and_the_ring_holds_it() -> None:
    common = {"dim": 100, "clip": 1.0, "gamma": 100.0, "noise_mu_total": 4e4, "min_survivors": 4,
              "max_summands": 500, "max_contributors": 5}  # fmt: skip
    plain = make_encoding(**common)  # type: ignore[arg-type]
    low = make_encoding(**common, noise_mu_floor=5e3)  # type: ignore[arg-type]
    high = make_encoding(**common, noise_mu_floor=4e4)  # type: ignore[arg-type]
    assert plain.noise_mu == low.noise_mu == 1e4 and high.noise_mu == 4e4
    assert high.noise_mu_total == plain.noise_mu_total  # the aggregate the ledger charges is unchanged
    # the ring is sized for five contributors each adding the floor
    assert high.ring_bits >= plain.ring_bits and high.wrap_probability <= 1e-9


def test_the_server_sizes_the_ring_for_the_floor_it_expects() -> None:
    plain = server_encoding(CONFIG, dim=DIM, threshold=2, participants=3)
    floored = server_encoding(CONFIG.replace({"dp.local-noise-multiplier": 8.0}), dim=DIM,
                              threshold=2, participants=3)  # fmt: skip
    assert plain.ring_bits == floored.ring_bits == CONFIG.dp.bits
    assert floored.gamma < plain.gamma  # more noise in the same ring: a coarser scale
    assert floored.noise_mu == pytest.approx((8.0 * floored.l2_bound) ** 2 / 2)


@pytest.mark.parametrize("value", ["-1", "nan", "lots"])
def test_a_bad_floor_in_the_node_config_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="ddp-local-noise-multiplier"):
        holder_settings(write_holder(tmp_path, **{"ddp-local-noise-multiplier": value}), CONFIG)


def test_a_floor_is_refused_in_local_mode() -> None:
    with pytest.raises(ConfigError, match="local-noise-multiplier"):
        CONFIG.replace({"dp.mode": "local", "dp.local-noise-multiplier": 1.0})
