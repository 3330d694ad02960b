"""A holder's share-evaluation policy decides where its federated-evaluation sums may go; the
server's request cannot widen it."""

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from holder_builders import (
    forbid_data_reads,
    gaussian_epsilon,
    node_context,
    server_request,
    setup_request,
    status_of,
    write_holder,
)

from fedsys.config import RunConfig, parse_feature_range
from fedsys.data import holder_client_data
from fedsys.errors import ConfigError
from fedsys.evaluation import EvaluationSums, add_noise, decode_section, evaluation_sums
from fedsys.models import build_model, load_weights
from fedsys.node import handlers, secure
from fedsys.node.policy import Refusal, deployment_policy
from fedsys.node.settings import holder_settings
from fedsys.privacy import PrivacyLedger
from fedsys.wire import METRICS, SECAGG, STATUS

_PLAINTEXT = {"require-secagg": "false", "min-cohort": 1}


def _scenario(**overrides):
    base = {"model": "logreg", "num-rounds": 2, "train.local-steps": 1, "train.batch-size": 16}
    return RunConfig().replace({**base, "train.lr": 1.0, "dp.noise-multiplier": 1.0, **overrides})


def _eval_message(config: RunConfig):
    flat_extra = {"server-round": 3, handlers.EVALUATE_ONLY: True}
    message, weights = server_request(config, message_type=f"train.{handlers.EVALUATE_ACTION}")
    record = message.content.config_records["config"]
    for key, value in flat_extra.items():
        record[key] = value
    return message, weights


def test_by_default_a_real_holder_keeps_its_sums_out_of_plaintext_replies(tmp_path):
    message, _ = server_request(_scenario())

    reply = handlers.train(message, node_context(write_holder(tmp_path, **_PLAINTEXT)), {})

    assert not any(k.startswith("eval-sum") for k in reply.content.metric_records[METRICS])


def test_a_holder_that_allows_plaintext_sends_the_sums_of_the_model_it_was_sent(tmp_path):
    node = write_holder(tmp_path, **_PLAINTEXT, **{"share-evaluation": "plain"})
    message, weights = server_request(_scenario())

    reply = handlers.train(message, node_context(node), {})

    shared = dict(reply.content.metric_records[METRICS])
    test = _test_split(node)
    model = build_model("logreg", test.feature_shape, 2)
    load_weights(model, weights, source="test")
    correct = int((model(torch.from_numpy(test.x)).argmax(1).numpy() == test.y).sum())
    assert shared["eval-sum-examples"] == len(test.y) and shared["eval-sum-correct"] == correct
    assert sum(shared["eval-sum-confusion"]) == len(test.y)
    assert not any(k in shared for k in ("epsilon", "steps", "num-examples"))  # share-epsilon is off


def test_the_final_plaintext_evaluation_is_declined_unless_the_holder_allows_it(tmp_path, monkeypatch):
    message, _ = _eval_message(_scenario())
    strict = write_holder(tmp_path, **_PLAINTEXT)  # share-evaluation defaults to "secure"
    forbid_data_reads(monkeypatch)

    reply = handlers.evaluate(message, node_context(strict), {})

    status, reason = status_of(reply)
    assert status == "declined" and reason.startswith(Refusal.EVALUATION_PRIVATE.value)


def test_the_final_evaluation_scores_without_training_or_spending_budget(tmp_path):
    node = write_holder(tmp_path, **_PLAINTEXT, **{"share-evaluation": "plain", "max-rounds-per-run": 2})
    message, _ = _eval_message(_scenario())

    reply = handlers.evaluate(message, node_context(node), {})

    assert dict(reply.content.metric_records[METRICS])["eval-sum-examples"] == len(_test_split(node).y)
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.summary() == []  # round 3 of a 2-round limit: scoring is not a round


def test_a_server_gets_one_scoring_only_request_per_run_in_plaintext(tmp_path):
    node = write_holder(tmp_path, **_PLAINTEXT, **{"share-evaluation": "plain"})
    context = node_context(node)  # one context per run at the SuperNode
    message, _ = _eval_message(_scenario())

    replies = [handlers.evaluate(message, context, {}) for _ in range(3)]

    assert STATUS not in replies[0].content.config_records or status_of(replies[0])[0] == "ok"
    for reply in replies[1:]:  # exact counts of any model the server likes, as often as it likes: no
        status, reason = status_of(reply)
        assert status == "declined" and reason.startswith(Refusal.EVALUATION_PRIVATE.value)
        assert not any(k.startswith("eval-sum") for k in reply.content.metric_records.get(METRICS, {}))


def test_a_server_gets_one_scoring_only_request_per_run_under_secagg(tmp_path, monkeypatch):
    node = write_holder(tmp_path)
    context = node_context(node)
    setup = ConfigRecord({**setup_request(threshold=2).to_record(), "integer-input": True})
    message, _ = server_request(_scenario(), rnd=3, extra={SECAGG: setup})
    message.content.config_records["config"][handlers.EVALUATE_ONLY] = True

    first = secure.setup(message, context, {})
    forbid_data_reads(monkeypatch)
    second = secure.setup(message, context, {})

    assert STATUS not in first.content.config_records  # keys advertised
    status, reason = status_of(second)
    assert status == "declined" and reason.startswith(Refusal.EVALUATION_PRIVATE.value)


def test_a_holder_that_shares_nowhere_contributes_zeros_to_a_secure_sum(tmp_path):
    config = _scenario()
    quiet = holder_settings(write_holder(tmp_path, **{"share-evaluation": "none"}), config)
    loud = holder_settings(write_holder(tmp_path, **{"share-evaluation": "secure"}), config)
    model = build_model("logreg", (6,), 2)
    sums = evaluation_sums(model, _test_split({"data-path": str(tmp_path / "hospital.csv")}), **_EVAL)

    silent = decode_section(secure._section(sums, 2, quiet, ring_bits=30), ring_bits=30, num_classes=2)
    spoken = decode_section(secure._section(sums, 2, loud, ring_bits=30), ring_bits=30, num_classes=2)

    assert silent.examples == 0 and not silent.confusion.any()
    assert (spoken.correct, spoken.examples, spoken.loss) == (sums.correct, sums.examples, sums.loss)
    assert np.array_equal(spoken.confusion, sums.confusion) and sums.examples > 0


def test_share_evaluation_must_be_one_of_three_words():
    assert deployment_policy({}, max_epsilon=1.0).share_evaluation == "secure"
    assert deployment_policy({"share-evaluation": "Plain"}, max_epsilon=1.0).share_evaluation == "plain"
    with pytest.raises(ConfigError, match="share-evaluation"):
        deployment_policy({"share-evaluation": "always"}, max_epsilon=1.0)


_EVAL = {"device": torch.device("cpu"), "loss_bound": 10.0, "max_examples": 10_000}


def _test_split(node):

    data = holder_client_data(
        Path(str(node["data-path"])),
        label_column="label",
        num_classes=2,
        feature_range=parse_feature_range("0,1", key="feature-range"),
    )
    return data.test


# --- optional DP on the released sums (evaluation.noise-multiplier) ----------------------------


def test_noisy_sums_are_charged_as_one_gaussian_release_before_they_leave(tmp_path):
    node = write_holder(tmp_path, **_PLAINTEXT, **{"share-evaluation": "plain"})
    message, _ = _eval_message(_scenario(**{"evaluation.noise-multiplier": 2.0}))

    reply = handlers.evaluate(message, node_context(node), {})

    shared = dict(reply.content.metric_records[METRICS])
    assert "eval-sum-examples" in shared
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        (entry,) = ledger.entries("default")
    assert (entry.noise_multiplier, entry.sample_rate, entry.steps, entry.status) == (
        2.0,
        1.0,
        1,
        "committed",
    )
    assert entry.epsilon_after == pytest.approx(gaussian_epsilon(2.0, entry.target_delta), rel=1e-6)


def test_a_holder_whose_budget_cannot_pay_for_the_noise_releases_nothing(tmp_path):
    node = write_holder(tmp_path, **_PLAINTEXT, **{"share-evaluation": "plain", "max-epsilon": 0.5})
    message, _ = _eval_message(_scenario(**{"evaluation.noise-multiplier": 1.0}))  # costs eps ~ 4.6

    reply = handlers.evaluate(message, node_context(node), {})

    assert status_of(reply)[0] == "budget-exhausted"
    assert METRICS not in reply.content.metric_records
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.entries("default") == []


def test_the_noise_has_the_stated_scale_on_every_coordinate():
    sums = EvaluationSums(50, 60, 30.0, np.array([[30, 5], [5, 20]]))
    rng = np.random.default_rng(1)

    draws = [add_noise(sums, noise_multiplier=2.0, loss_bound=4.0, rng=rng) for _ in range(4000)]

    std = 2.0 * 2  # L2 sensitivity 2 with the loss in units of its bound 4
    assert np.std([d.loss for d in draws]) == pytest.approx(4 * std, rel=0.05)
    assert np.std([d.examples for d in draws]) == pytest.approx(std, rel=0.05)
    assert np.std([d.confusion[1, 0] for d in draws]) == pytest.approx(std, rel=0.05)
    assert abs(np.mean([d.correct for d in draws]) - 50) < 0.3
