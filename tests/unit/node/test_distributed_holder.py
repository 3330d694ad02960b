"""A data holder in distributed-DP mode, played against by the server (tests/unit/node/holder_builders).

What the holder relies on is its own: its noise comes from OS entropy, its ledger charges the
aggregate noise computed from its own view of the round, and whatever scale or ring the server
sends changes precision, never the guarantee the ledger states.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord
from holder_builders import (
    N_FEATURES,
    ROUND,
    ddp_setup_request,
    node_context,
    server_request,
    status_of,
    write_holder,
)

from fedsys.config import RunConfig
from fedsys.errors import ProtocolError
from fedsys.models import build_model, to_arrays
from fedsys.node import secure
from fedsys.node.distributed import _generators, distributed_update
from fedsys.node.settings import holder_settings
from fedsys.privacy import PrivacyLedger
from fedsys.privacy.distributed import epsilon_of
from fedsys.privacy.distributed_round import holder_encoding, round_segment
from fedsys.secagg.ddp_bounds import padded_dim_for
from fedsys.wire import SECAGG

DIM = N_FEATURES * 2 + 2
CONFIG = RunConfig().replace(
    {
        "model": "logreg",
        "num-rounds": 50,
        "train.batch-size": 16,
        "dp.mode": "distributed",
        "dp.noise-multiplier": 2.0,
        "dp.bits": 20,
    }
)


def _settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    node = write_holder(tmp_path, rows=80)
    return holder_settings(node, CONFIG), node


def test_a_real_holders_noise_and_sampling_come_from_the_os_whatever_the_server_sends(tmp_path: Path) -> None:
    settings, _ = _settings(tmp_path)
    assert not settings.simulated
    draws = []
    for _ in range(2):  # the same config, seed and round each time
        sampling, rounding, noise = _generators(CONFIG.replace({"seed": 7}), settings, 3)
        draws.append((int(sampling.initial_seed()), rounding.integers(2**62), noise.integers(2**62)))
    assert draws[0][0] != draws[1][0] and draws[0][1] != draws[1][1] and draws[0][2] != draws[1][2]
    assert type(noise.bit_generator).__name__ == "ChaCha"


def test_two_identical_requests_get_independent_noise_at_a_real_holder(tmp_path: Path) -> None:
    settings, _ = _settings(tmp_path)
    weights = to_arrays(build_model("logreg", (N_FEATURES,), 2))
    updates = [
        distributed_update(
            CONFIG, settings, weights, setup=ddp_setup_request(), server_round=1, run_id="00ff"
        )
        for _ in range(2)
    ]
    first, second = (u.encoded for u in updates)
    assert first is not None and second is not None
    assert np.mean(first != second) > 0.9


@pytest.mark.parametrize("gamma", [0.5, 50.0, 5000.0])
def test_the_ledger_charges_the_noise_the_holder_adds_whatever_scale_the_server_picks(
    tmp_path: Path, gamma: float
) -> None:
    settings, _ = _settings(tmp_path)
    weights = to_arrays(build_model("logreg", (N_FEATURES,), 2))
    update = distributed_update(
        CONFIG,
        settings,
        weights,
        setup=ddp_setup_request(gamma=gamma, ring_bits=40),
        server_round=1,
        run_id="00ff",
    )
    enc = holder_encoding(CONFIG, dim=DIM, gamma=gamma, ring_bits=40, threshold=2, participants=3)
    with PrivacyLedger(settings.ledger_path) as ledger:
        (entry,) = ledger.entries(settings.dataset_name)
    segment = round_segment(enc, entry.sample_rate)
    assert update.status == "ok" and entry.sample_rate == 1 / 4  # 64 training rows at batch 16
    assert entry.mechanism == "skellam" and entry.skellam_mu == pytest.approx(enc.noise_mu_total)
    assert enc.noise_mu * 2 == pytest.approx(enc.noise_mu_total)  # each of t = 2 adds half
    assert update.metrics["epsilon"] == pytest.approx(epsilon_of([], [segment], 1e-5))
    # the aggregate's noise, in gradient units, is never below noise-multiplier x clip
    assert np.sqrt(2 * enc.noise_mu_total) / gamma >= CONFIG.dp.noise_multiplier * CONFIG.dp.max_grad_norm
    # and one round costs about the same epsilon at any scale (z fixes the leading RDP term)
    usual = holder_encoding(CONFIG, dim=DIM, gamma=50.0, ring_bits=40, threshold=2, participants=3)
    reference = epsilon_of([], [round_segment(usual, 1 / 4)], 1e-5)
    assert update.metrics["epsilon"] == pytest.approx(reference, rel=0.05)


def test_a_holder_in_distributed_mode_refuses_a_real_valued_setup_and_vice_versa(tmp_path: Path) -> None:
    _, node = _settings(tmp_path)
    for config, integer in ((CONFIG, False), (CONFIG.replace({"dp.mode": "local"}), True)):
        message = server_request(
            config,
            extra={SECAGG: ConfigRecord(ddp_setup_request(integer=integer).to_record())},
            message_type="train.secagg_setup",
        )[0]
        with pytest.raises(ProtocolError, match="does not match the secagg setup"):
            secure.setup(message, node_context(node), {})


def test_a_holder_declines_at_setup_a_distributed_round_its_budget_cannot_pay(tmp_path: Path) -> None:
    settings, node = _settings(tmp_path)
    config = CONFIG.replace({"dp.noise-multiplier": 0.05})
    message = server_request(
        config,
        extra={SECAGG: ConfigRecord(ddp_setup_request().to_record())},
        message_type="train.secagg_setup",
    )[0]
    reply = secure.setup(message, node_context(node), {})
    status, reason = status_of(reply)
    assert status == "budget-exhausted" and "budget" in reason
    with PrivacyLedger(settings.ledger_path) as ledger:
        assert ledger.history(settings.dataset_name) == []  # nothing reserved, nothing spent


def test_the_holder_sends_its_clipped_gradients_plus_exactly_its_noise_share(tmp_path: Path) -> None:
    """Replays a simulated holder's sampling and rounding: what is left is its Skellam share."""
    from fedsys.config import BudgetConfig
    from fedsys.node.settings import HolderSettings
    from fedsys.node.update import local_data
    from fedsys.privacy.distributed_round import rotation_seed
    from fedsys.privacy.dpsgd import sample_rate_for
    from fedsys.privacy.fedsgd import per_example_gradients, poisson_sample
    from fedsys.secagg.ddp import encode_records

    config = CONFIG.replace({"dataset": "digits", "dp.bits": 30})
    settings = HolderSettings(
        budget=BudgetConfig(max_epsilon=50.0), ledger_path=tmp_path / "l.sqlite", device="cpu",
        partition_id=1, num_partitions=5,
    )  # fmt: skip
    weights = to_arrays(build_model("logreg", (64,), 10))
    dim = sum(a.size for a in weights.values())
    setup = replace(
        ddp_setup_request(gamma=300.0, ring_bits=30, threshold=2), vector_length=padded_dim_for(dim)
    )
    update = distributed_update(config, settings, weights, setup=setup, server_round=4, run_id="00ab")
    assert update.encoded is not None

    data = local_data(config, settings)
    sampling, rounding, _ = _generators(config, settings, 4)
    batch = poisson_sample(len(data.train), sample_rate_for(len(data.train), 16), sampling)
    x, y = data.train.to_torch().tensors
    names = list(weights)
    grads = per_example_gradients(
        build_model("logreg", (64,), 10),
        x[batch],
        y[batch],
        order=names,
        sizes=[weights[k].size for k in names],
    )
    clean = encode_records(grads, _enc_for(config, dim), rotation_seed=rotation_seed("00ab", 4), rng=rounding)
    noise = update.encoded.astype(np.int64) - clean
    noise = (noise + (1 << 29)) % (1 << 30) - (1 << 29)  # centred in Z_2^30
    mu_share = _enc_for(config, dim).noise_mu
    assert mu_share == pytest.approx(_enc_for(config, dim).noise_mu_total / 2)  # t = 2 in the setup
    assert np.var(noise) == pytest.approx(2 * mu_share, rel=0.15)
    assert abs(np.mean(noise)) < 4 * np.sqrt(2 * mu_share / noise.size)


def _enc_for(config: RunConfig, dim: int):  # type: ignore[no-untyped-def]
    return holder_encoding(config, dim=dim, gamma=300.0, ring_bits=30, threshold=2, participants=3)


def test_at_client_level_the_holder_sends_its_whole_clipped_update_and_charges_rate_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _ = _settings(tmp_path)
    # the signal path only: the noise share (tested above) is switched off for this check
    monkeypatch.setattr(
        "fedsys.secagg.ddp.sample_skellam", lambda mu, size, rng: np.zeros(size, dtype=np.int64)
    )
    config = CONFIG.replace({"dp.level": "client", "dp.max-grad-norm": 0.2,
                             "train.lr": 0.5, "train.local-epochs": 2})  # fmt: skip
    weights = to_arrays(build_model("logreg", (N_FEATURES,), 2))
    setup = ddp_setup_request(gamma=1e5, ring_bits=40)
    update = distributed_update(config, settings, weights, setup=setup, server_round=1, run_id="00ff")
    assert update.status == "ok" and update.encoded is not None
    enc = holder_encoding(config, dim=DIM, gamma=1e5, ring_bits=40, threshold=2, participants=3)
    from fedsys.privacy.distributed_round import rotation_seed
    from fedsys.secagg.ddp import decode_sum

    sent = decode_sum(update.encoded, enc, rotation_seed=rotation_seed("00ff", 1))  # alone: no masks
    assert np.linalg.norm(sent) == pytest.approx(0.2, rel=0.02)  # a whole local update, clipped to 0.2
    with PrivacyLedger(settings.ledger_path) as ledger:
        (entry,) = ledger.entries(settings.dataset_name)
    assert entry.sample_rate == 1.0 and entry.skellam_mu == pytest.approx(enc.noise_mu_total)


def test_a_server_cannot_switch_the_dp_mode_between_setup_and_mask_to_burn_budget(tmp_path: Path) -> None:
    """Set up a distributed round, then ask for a local-mode mask: refused before any spending."""
    settings, node = _settings(tmp_path)
    context = node_context(node)
    setup = replace(ddp_setup_request(), vector_length=padded_dim_for(DIM))
    message = server_request(
        CONFIG, extra={SECAGG: ConfigRecord(setup.to_record())}, message_type="train.secagg_setup"
    )[0]
    secure.setup(message, context, {})
    local = CONFIG.replace({"dp.mode": "local"})
    from fedsys.secagg import MaskedInputRequest

    mask = MaskedInputRequest(context=ROUND, recipient=1, envelopes={})
    request = server_request(
        local, extra={SECAGG: ConfigRecord(mask.to_record())}, message_type="train.secagg_mask"
    )[0]
    with pytest.raises(ProtocolError, match="does not match"):
        secure.mask(request, context, {})
    with PrivacyLedger(settings.ledger_path) as ledger:
        assert ledger.history(settings.dataset_name) == []
