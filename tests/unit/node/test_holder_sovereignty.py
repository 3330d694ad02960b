"""Attacks by a hostile server on a real data holder's ClientApp: it may ask, the holder decides.

Each test plays the server: it knows the scenario's seed, the round, the weights it sent and
the holder's data path, and it writes every byte of the request. The holder is configured as
in deployment (a node config with ``data-path``), and the handlers are the ClientApp's own.
"""

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedsys.config import RunConfig
from fedsys.models import build_model, to_arrays
from fedsys.node import handlers, secure
from fedsys.node.policy import HolderPolicy, Refusal, check_request, deployment_policy
from fedsys.node.settings import holder_settings
from fedsys.node.update import LocalUpdate, compute_update, shareable_metrics
from fedsys.privacy import PrivacyLedger
from fedsys.secagg import (
    AdvertiseKeysReply,
    MaskedInputRequest,
    RoundContext,
    SecAggClient,
    SetupRequest,
    ShareKeysRequest,
)
from fedsys.wire import ARRAYS, CONFIG, METRICS, SECAGG, STATUS, to_record

N_FEATURES, N_ROWS = 6, 120


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _holder(tmp_path, **policy):
    rng = np.random.default_rng(0)
    rows = [",".join(f"{v:.3f}" for v in rng.uniform(0, 1, N_FEATURES)) + f",{i % 2}" for i in range(N_ROWS)]
    data = tmp_path / "hospital.csv"
    data.write_text(",".join(f"f{i}" for i in range(N_FEATURES)) + ",label\n" + "\n".join(rows) + "\n")
    PrivacyLedger(tmp_path / "ledger.sqlite", create=True).close()  # `fedsys ledger init`
    return {
        "data-path": str(data),
        "max-epsilon": 50.0,
        "ledger-path": str(tmp_path / "ledger.sqlite"),
        "feature-range": "0,1",
        **policy,
    }


def _scenario(**overrides):
    base = {"model": "logreg", "num-rounds": 5, "train.local-steps": 1, "train.batch-size": 16}
    base.update({"train.lr": 1.0, "train.momentum": 0.0, "dp.noise-multiplier": 1.0})
    return RunConfig().replace({**base, **overrides})


def _request(config, rnd=1, extra=None):
    flat = {**config.to_flat(), "server-round": rnd, "run-id": "00ff"}
    weights = to_arrays(build_model(config.model, (N_FEATURES,), 2))
    content = RecordDict({CONFIG: ConfigRecord(flat), ARRAYS: to_record(weights)})
    for key, record in (extra or {}).items():
        content[key] = record
    return Message(content, message_type="train", dst_node_id=5), weights


def _context(node_config):
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})


def _no_data_reads(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the holder read its data for a request its policy refuses")

    monkeypatch.setattr("fedsys.node.update.local_data", forbidden)


def _status(reply):
    record = reply.content.config_records[STATUS]
    return str(record["status"]), str(record["reason"])


# --- 1. DP noise and sampling: nothing the server knows determines them -----------------------


def test_a_server_knowing_seed_path_round_and_weights_cannot_replay_a_holders_noise(tmp_path):
    config = _scenario(seed=1234)
    settings = holder_settings(_holder(tmp_path), config)
    _, weights = _request(config)

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
    node = _holder(tmp_path, **{"require-secagg": "false", "min-cohort": 1})
    message, _ = _request(_scenario(**{"dp.enabled": False}))
    _no_data_reads(monkeypatch)

    reply = handlers.train(message, _context(node), {})

    status, reason = _status(reply)
    assert status == "declined" and reason.startswith(Refusal.DP_REQUIRED.value)
    assert ARRAYS not in reply.content.array_records
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.summary() == []


def test_a_holder_requires_secure_aggregation_by_default(tmp_path, monkeypatch):
    message, _ = _request(_scenario())
    _no_data_reads(monkeypatch)

    reply = handlers.train(message, _context(_holder(tmp_path)), {})

    assert _status(reply)[1].startswith(Refusal.SECAGG_REQUIRED.value)
    assert ARRAYS not in reply.content.array_records


ROUND = RoundContext(run_id=0xFF, round=1)


def _setup(threshold, neighbours=(2, 3), recipient=1, max_weight=1000.0):
    return SetupRequest(
        context=ROUND,
        recipient=recipient,
        neighbours=neighbours,
        threshold=threshold,
        ring_bits=40,
        quant_bits=16,
        clip_range=8.0,
        vector_length=14,  # logreg, 6 features, 2 classes
        max_weight=max_weight,
    )


def _setup_record(threshold, neighbours=(2, 3)):
    return _setup(threshold, neighbours).to_record()


def test_a_secure_round_that_could_release_a_sum_below_the_holders_cohort_is_refused(tmp_path, monkeypatch):
    node = _holder(tmp_path, **{"min-cohort": 3})
    message, _ = _request(_scenario(), extra={SECAGG: ConfigRecord(_setup_record(threshold=2))})
    _no_data_reads(monkeypatch)

    reply = secure.setup(message, _context(node), {})

    assert _status(reply)[1].startswith(Refusal.COHORT_TOO_SMALL.value)
    assert secure._STATE not in _context(node).state.config_records


def test_a_server_cannot_pass_setup_and_then_ask_for_less(tmp_path, monkeypatch):
    node = _holder(tmp_path)
    context = _context(node)
    setup_message, _ = _request(_scenario(), extra={SECAGG: ConfigRecord(_setup_record(threshold=2))})
    assert STATUS not in secure.setup(setup_message, context, {}).content.config_records
    mask_message, _ = _request(_scenario(**{"dp.enabled": False}), extra={SECAGG: ConfigRecord({})})
    _no_data_reads(monkeypatch)

    with pytest.raises(Exception, match="policy"):
        secure.mask(mask_message, context, {})


def test_a_holder_refuses_more_rounds_than_it_allows(tmp_path, monkeypatch):
    node = _holder(tmp_path, **{"max-rounds-per-run": 3, "require-secagg": "false", "min-cohort": 1})
    _no_data_reads(monkeypatch)

    long_run = handlers.train(_request(_scenario(**{"num-rounds": 4}))[0], _context(node), {})
    late_round = handlers.train(_request(_scenario(**{"num-rounds": 3}), rnd=9)[0], _context(node), {})

    assert _status(long_run)[1].startswith(Refusal.TOO_MANY_ROUNDS.value)
    assert _status(late_round)[1].startswith(Refusal.TOO_MANY_ROUNDS.value)


def test_a_server_repeating_round_one_is_counted_all_the_same(tmp_path):
    node = _holder(tmp_path, **{"max-rounds-per-run": 2, "require-secagg": "false", "min-cohort": 1})
    context = _context(node)  # the SuperNode keeps one context per run
    message = _request(_scenario(**{"num-rounds": 1}), rnd=1)[0]

    replies = [handlers.train(message, context, {}) for _ in range(3)]

    assert [STATUS in r.content.config_records and _status(r)[0] for r in replies] == ["ok", "ok", "declined"]
    assert _status(replies[2])[1].startswith(Refusal.TOO_MANY_ROUNDS.value)


def test_a_mask_request_that_cannot_complete_costs_no_budget(tmp_path, monkeypatch):
    context = _context(_holder(tmp_path))
    setup_message, _ = _request(_scenario(), extra={SECAGG: ConfigRecord(_setup_record(threshold=2))})
    secure.setup(setup_message, context, {})
    skipped_share = MaskedInputRequest(context=ROUND, recipient=1, envelopes={})  # stage 2 never ran
    mask_message, _ = _request(_scenario(), extra={SECAGG: ConfigRecord(skipped_share.to_record())})
    _no_data_reads(monkeypatch)

    with pytest.raises(Exception, match="expected stage 2"):
        secure.mask(mask_message, context, {})

    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.summary() == []


def test_the_weight_is_clamped_with_the_max_weight_agreed_at_setup(tmp_path):
    context = _context(_holder(tmp_path))
    config = _scenario()  # its secagg.max-weight (10000) exceeds the setup's 1.0
    setup = _setup(threshold=2, neighbours=(2,), max_weight=1.0)
    setup_message, _ = _request(config, extra={SECAGG: ConfigRecord(setup.to_record())})
    own_keys = secure.setup(setup_message, context, {}).content.config_records[SECAGG]
    peer = SecAggClient(2)
    peer_keys = peer.advertise_keys(_setup(threshold=2, neighbours=(1,), recipient=2, max_weight=1.0)).keys
    share = ShareKeysRequest(context=ROUND, recipient=1, peer_keys={2: peer_keys})
    secure.share(_request(config, extra={SECAGG: ConfigRecord(share.to_record())})[0], context, {})
    mine = AdvertiseKeysReply.from_record(dict(own_keys)).keys
    envelopes = peer.share_keys(ShareKeysRequest(context=ROUND, recipient=2, peer_keys={1: mine})).envelopes
    masked = MaskedInputRequest(context=ROUND, recipient=1, envelopes={2: envelopes[1]})

    reply = secure.mask(_request(config, extra={SECAGG: ConfigRecord(masked.to_record())})[0], context, {})

    assert "masked" in reply.content.array_records


def test_a_real_holders_error_text_stays_in_its_log(tmp_path):
    node = _holder(tmp_path, **{"require-secagg": "false", "min-cohort": 1})
    message, _ = _request(_scenario(**{"num-classes": 1}))  # labels 0 and 1: a DataError at the holder

    with pytest.raises(Exception) as raised:
        handlers.private_errors(handlers.train)(message, _context(node), {})

    assert "hospital.csv" not in str(raised.value) and "label" not in str(raised.value)
    assert "DataError" in str(raised.value) or "Error" in str(raised.value)


def test_deployment_defaults_are_the_safe_ones():
    policy = deployment_policy({}, max_epsilon=8.0)

    assert policy == HolderPolicy(require_dp=True, require_secagg=True, min_cohort=2, share_epsilon=False)
    assert check_request(policy, _scenario(), server_round=1, secure=True, cohort=3, threshold=2) is None
    assert check_request(policy, _scenario(), server_round=1, secure=True, cohort=3, threshold=1) is not None


# --- 6. What leaves the holder beside its update -----------------------------------------------


def test_a_plaintext_dp_reply_reveals_nothing_of_the_data_size_unless_the_holder_opts_in(tmp_path):
    message, _ = _request(_scenario())
    quiet = _holder(tmp_path, **{"require-secagg": "false", "min-cohort": 1})

    reply = handlers.train(message, _context(quiet), {})

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
