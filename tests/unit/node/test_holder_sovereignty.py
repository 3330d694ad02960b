"""Attacks by a hostile server on a real data holder's ClientApp: it may ask, the holder decides.

Each test plays the server: it knows the scenario's seed, the round, the weights it sent and
the holder's data path, and it writes every byte of the request. The holder is configured as
in deployment (a node config with ``data-path``), and the handlers are the ClientApp's own.
"""

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord
from holder_builders import (
    ROUND,
    forbid_data_reads,
    node_context,
    server_request,
    setup_request,
    status_of,
    write_holder,
)

from fedsys.config import RunConfig
from fedsys.node import handlers, secure
from fedsys.node.policy import HolderPolicy, Refusal, check_request, deployment_policy
from fedsys.node.settings import holder_settings
from fedsys.node.update import LocalUpdate, compute_update, shareable_metrics
from fedsys.privacy import PrivacyLedger
from fedsys.secagg import (
    AdvertiseKeysReply,
    MaskedInputRequest,
    SecAggClient,
    ShareKeysRequest,
)
from fedsys.wire import ARRAYS, CONFIG, METRICS, SECAGG, STATUS

N_ROWS = 120  # write_holder's default


def _scenario(**overrides):
    base = {"model": "logreg", "num-rounds": 5, "train.local-steps": 1, "train.batch-size": 16}
    base.update({"train.lr": 1.0, "train.momentum": 0.0, "dp.noise-multiplier": 1.0})
    return RunConfig().replace({**base, **overrides})


# --- 1. DP noise and sampling: nothing the server knows determines them -----------------------


def test_a_server_knowing_seed_path_round_and_weights_cannot_replay_a_holders_noise(tmp_path):
    config = _scenario(seed=1234)
    settings = holder_settings(write_holder(tmp_path), config)
    _, weights = server_request(config)

    first = compute_update(config, settings, weights, server_round=3, run_id="00ff")
    replay = compute_update(config, settings, weights, server_round=3, run_id="00ff")

    # One DP-SGD step: delta = -lr * (clipped sum + N(0, (sigma C)^2 I)) / (n q).
    d = sum(v.size for v in weights.values())
    expected_batch = N_ROWS / math.ceil(N_ROWS / config.train.batch_size)
    noise_norm = config.train.lr * config.dp.noise_multiplier * config.dp.max_grad_norm * math.sqrt(d)
    noise_norm /= expected_batch
    gap = math.sqrt(sum(float(np.sum((first.delta[k] - replay.delta[k]) ** 2)) for k in weights))
    assert gap > 0.5 * noise_norm, (
        f"the replayed update is {gap:.2e} from the real one (noise {noise_norm:.2e})"
    )


# --- 2. The server cannot switch DP, SecAgg or the cohort off ---------------------------------


def test_a_server_cannot_switch_dp_off(tmp_path, monkeypatch):
    node = write_holder(tmp_path, **{"require-secagg": "false", "min-cohort": 1})
    message, _ = server_request(_scenario(**{"dp.enabled": False}))
    forbid_data_reads(monkeypatch)

    reply = handlers.train(message, node_context(node), {})

    status, reason = status_of(reply)
    assert status == "declined" and reason.startswith(Refusal.DP_REQUIRED.value)
    assert ARRAYS not in reply.content.array_records
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.summary() == []


def test_a_holder_requires_secure_aggregation_by_default(tmp_path, monkeypatch):
    message, _ = server_request(_scenario())
    forbid_data_reads(monkeypatch)

    reply = handlers.train(message, node_context(write_holder(tmp_path)), {})

    assert status_of(reply)[1].startswith(Refusal.SECAGG_REQUIRED.value)
    assert ARRAYS not in reply.content.array_records


def _setup_record(threshold, neighbours=(2, 3)):
    return setup_request(threshold, neighbours).to_record()


def test_a_secure_round_that_could_release_a_sum_below_the_holders_cohort_is_refused(tmp_path, monkeypatch):
    node = write_holder(tmp_path, **{"min-cohort": 3})
    message, _ = server_request(_scenario(), extra={SECAGG: ConfigRecord(_setup_record(threshold=2))})
    forbid_data_reads(monkeypatch)

    reply = secure.setup(message, node_context(node), {})

    assert status_of(reply)[1].startswith(Refusal.COHORT_TOO_SMALL.value)
    assert secure._STATE not in node_context(node).state.config_records


def test_a_server_cannot_pass_setup_and_then_ask_for_less(tmp_path, monkeypatch):
    node = write_holder(tmp_path)
    context = node_context(node)
    setup_message, _ = server_request(_scenario(), extra={SECAGG: ConfigRecord(_setup_record(threshold=2))})
    assert STATUS not in secure.setup(setup_message, context, {}).content.config_records
    mask_message, _ = server_request(_scenario(**{"dp.enabled": False}), extra={SECAGG: ConfigRecord({})})
    forbid_data_reads(monkeypatch)

    with pytest.raises(Exception, match="policy"):
        secure.mask(mask_message, context, {})


def test_a_holder_refuses_more_rounds_than_it_allows(tmp_path, monkeypatch):
    node = write_holder(tmp_path, **{"max-rounds-per-run": 3, "require-secagg": "false", "min-cohort": 1})
    forbid_data_reads(monkeypatch)

    long_run = handlers.train(server_request(_scenario(**{"num-rounds": 4}))[0], node_context(node), {})
    late_round = handlers.train(
        server_request(_scenario(**{"num-rounds": 3}), rnd=9)[0], node_context(node), {}
    )

    assert status_of(long_run)[1].startswith(Refusal.TOO_MANY_ROUNDS.value)
    assert status_of(late_round)[1].startswith(Refusal.TOO_MANY_ROUNDS.value)


def test_a_server_repeating_round_one_is_counted_all_the_same(tmp_path):
    node = write_holder(tmp_path, **{"max-rounds-per-run": 2, "require-secagg": "false", "min-cohort": 1})
    context = node_context(node)  # the SuperNode keeps one context per run
    message = server_request(_scenario(**{"num-rounds": 1}), rnd=1)[0]

    replies = [handlers.train(message, context, {}) for _ in range(3)]

    assert [STATUS in r.content.config_records and status_of(r)[0] for r in replies] == [
        "ok",
        "ok",
        "declined",
    ]
    assert status_of(replies[2])[1].startswith(Refusal.TOO_MANY_ROUNDS.value)


def test_a_mask_request_that_cannot_complete_costs_no_budget(tmp_path, monkeypatch):
    context = node_context(write_holder(tmp_path))
    setup_message, _ = server_request(_scenario(), extra={SECAGG: ConfigRecord(_setup_record(threshold=2))})
    secure.setup(setup_message, context, {})
    skipped_share = MaskedInputRequest(context=ROUND, recipient=1, envelopes={})  # stage 2 never ran
    mask_message, _ = server_request(_scenario(), extra={SECAGG: ConfigRecord(skipped_share.to_record())})
    forbid_data_reads(monkeypatch)

    with pytest.raises(Exception, match="expected stage 2"):
        secure.mask(mask_message, context, {})

    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.summary() == []


def test_the_weight_is_clamped_with_the_max_weight_agreed_at_setup(tmp_path):
    context = node_context(write_holder(tmp_path))
    config = _scenario()  # its secagg.max-weight (10000) exceeds the setup's 1.0
    setup = setup_request(threshold=2, neighbours=(2,), max_weight=1.0)
    setup_message, _ = server_request(config, extra={SECAGG: ConfigRecord(setup.to_record())})
    own_keys = secure.setup(setup_message, context, {}).content.config_records[SECAGG]
    peer = SecAggClient(2)
    peer_keys = peer.advertise_keys(
        setup_request(threshold=2, neighbours=(1,), recipient=2, max_weight=1.0)
    ).keys
    share = ShareKeysRequest(context=ROUND, recipient=1, peer_keys={2: peer_keys})
    secure.share(server_request(config, extra={SECAGG: ConfigRecord(share.to_record())})[0], context, {})
    mine = AdvertiseKeysReply.from_record(dict(own_keys)).keys
    envelopes = peer.share_keys(ShareKeysRequest(context=ROUND, recipient=2, peer_keys={1: mine})).envelopes
    masked = MaskedInputRequest(context=ROUND, recipient=1, envelopes={2: envelopes[1]})

    reply = secure.mask(
        server_request(config, extra={SECAGG: ConfigRecord(masked.to_record())})[0], context, {}
    )

    assert "masked" in reply.content.array_records


def test_a_real_holders_error_text_stays_in_its_log(tmp_path):
    node = write_holder(tmp_path, **{"require-secagg": "false", "min-cohort": 1})
    message, _ = server_request(_scenario(**{"num-classes": 1}))  # labels 0 and 1: a DataError at the holder

    with pytest.raises(Exception) as raised:
        handlers.private_errors(handlers.train)(message, node_context(node), {})

    assert "hospital.csv" not in str(raised.value) and "label" not in str(raised.value)
    assert "DataError" in str(raised.value) or "Error" in str(raised.value)


def test_deployment_defaults_are_the_safe_ones():
    policy = deployment_policy({}, max_epsilon=8.0)

    assert policy == HolderPolicy(
        require_dp=True,
        require_secagg=True,
        min_cohort=2,
        share_epsilon=False,
        allowed_models=frozenset(),
        share_evaluation="secure",
    )
    assert check_request(policy, _scenario(), server_round=1, secure=True, cohort=3, threshold=2) is None
    assert check_request(policy, _scenario(), server_round=1, secure=True, cohort=3, threshold=1) is not None


# --- 6. What leaves the holder beside its update -----------------------------------------------


def test_a_plaintext_dp_reply_reveals_nothing_of_the_data_size_unless_the_holder_opts_in(tmp_path):
    message, _ = server_request(_scenario())
    quiet = write_holder(tmp_path, **{"require-secagg": "false", "min-cohort": 1})

    reply = handlers.train(message, node_context(quiet), {})

    shared = dict(reply.content.metric_records[METRICS])
    assert shared == {}  # no epsilon, steps or example count: each reveals n
    assert ARRAYS in reply.content.array_records


def test_under_secagg_nothing_that_reveals_the_number_of_examples_is_shared():
    update = LocalUpdate(
        status="ok",
        num_examples=372,
        metrics={"epsilon": 1.5, "steps": 93.0, "truncated": 0.0, "train-loss": 0.3, "eval-accuracy": 0.9},
    )

    assert shareable_metrics(update, dp_enabled=True, secure=True, share_epsilon=False) == {}
    assert shareable_metrics(update, dp_enabled=True, secure=True, share_epsilon=True) == {"epsilon": 1.5}
    assert shareable_metrics(update, dp_enabled=True, secure=False, share_epsilon=False) == {}
    plain = shareable_metrics(update, dp_enabled=True, secure=False, share_epsilon=True)
    assert set(plain) == {"epsilon", "steps", "truncated"}


# --- 7. The server cannot make a holder import code -------------------------------------------


def _record_imports(monkeypatch) -> list[str]:
    import importlib

    imported: list[str] = []
    real = importlib.import_module

    def spy(name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        imported.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", spy)
    return imported


@pytest.mark.parametrize("handler", ["plaintext", "secagg"])
def test_a_server_cannot_make_a_holder_import_a_module_it_did_not_allow(tmp_path, monkeypatch, handler):
    node = write_holder(tmp_path, **{"min-cohort": 1})
    extra = {SECAGG: ConfigRecord(_setup_record(threshold=2))} if handler == "secagg" else None
    message, _ = server_request(_scenario(), extra=extra)
    message.content.config_records[CONFIG]["model"] = "fixtures_models:tanh_net"  # runs module code
    imported = _record_imports(monkeypatch)
    forbid_data_reads(monkeypatch)

    if handler == "plaintext":
        reply = handlers.train(message, node_context({**node, "require-secagg": "false"}), {})
    else:
        reply = secure.setup(message, node_context(node), {})

    status, reason = status_of(reply)
    assert status == "declined" and reason.startswith(Refusal.MODEL_NOT_ALLOWED.value)
    assert "fixtures_models" not in imported


def test_a_holder_builds_the_user_models_it_allows_and_simulation_allows_any():
    config = _scenario(model="fixtures_models:tanh_net")
    allowed = deployment_policy({"allow-models": " fixtures_models:tanh_net , other.mod:f"}, max_epsilon=8.0)
    default = deployment_policy({}, max_epsilon=8.0)

    assert allowed.allowed_models == {"fixtures_models:tanh_net", "other.mod:f"}
    assert check_request(allowed, config, server_round=1, secure=True, cohort=3, threshold=2) is None
    refused = check_request(default, config, server_round=1, secure=True, cohort=3, threshold=2)
    assert refused is not None and refused[0] is Refusal.MODEL_NOT_ALLOWED
    assert check_request(default, _scenario(), server_round=1, secure=True, cohort=3, threshold=2) is None
    assert check_request(HolderPolicy(), config, server_round=1, secure=False) is None  # simulation
