"""The round loop applies the server optimizer to the round's aggregate only, and only after a
successful round; its state survives a checkpoint and a resume exactly."""

import dataclasses

import numpy as np
import pytest
import torch
from coordinator_builders import (
    WEIGHTS,
    Script,
    ScriptedGrid,
    node_config,
    reply_with,
    run_plain,
    trainer,
    update,
)
from flwr.app import Error, Message
from secure_builders import SecAggNode, run_secure

from fedsys.config import RunConfig, ServerConfig
from fedsys.coordinator.checkpoint import load_checkpoint
from fedsys.coordinator.loop import Coordinator, next_model
from fedsys.errors import ConfigError
from fedsys.models import build_model, to_arrays
from fedsys.strategy import ServerOptimizerState
from fedsys.wire import CONFIG, to_record

# a node's delta in round r: VALUES[r] * (node id) * a fixed per-coordinate pattern
VALUES = {1: 0.5, 2: -0.25, 3: 1.0, 4: 0.1, 5: -0.6}


def _scripted(node: int, values=VALUES) -> Script:
    return trainer(node, values)


def _crashed(message: Message) -> Message:
    return Message(Error(code=1, reason="client died"), reply_to=message)


def _config(rounds: int, **server: object) -> RunConfig:
    """A deployment-style run (the nodes are the clients) of a 2-feature logistic regression."""
    overrides = {f"server.{k}": v for k, v in server.items()}
    return node_config(
        **{
            "num-rounds": rounds,
            "dp.enabled": False,
            "evaluation.federated": False,  # the scripted nodes only train
            **overrides,
        }
    )


def _run(run_dir, config, script, *, resume=False):
    coordinator = Coordinator(ScriptedGrid(script), config, run_dir, simulated=False, resume=resume)  # type: ignore[arg-type]
    coordinator.run()
    return coordinator, load_checkpoint(run_dir)


def _three_nodes():
    return {n: _scripted(n) for n in (1, 2, 3)}


def _assert_same_weights(a, b):
    assert set(a) == set(b)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("optimizer", ["momentum", "adam", "yogi"])
def test_a_resumed_run_ends_with_the_weights_of_a_straight_run(tmp_path, optimizer):
    server = {"optimizer": optimizer, "lr": 0.1}
    _, straight = _run(tmp_path / "straight", _config(5, **server), _three_nodes())

    _run(tmp_path / "resumed", _config(2, **server), _three_nodes())
    _, resumed = _run(tmp_path / "resumed", _config(5, **server), _three_nodes(), resume=True)

    assert resumed.round == straight.round == 5
    _assert_same_weights(resumed.weights, straight.weights)
    assert resumed.optimizer is not None and resumed.optimizer.step == 5
    _assert_same_weights(resumed.optimizer.first_moment, straight.optimizer.first_moment)


def test_resuming_with_another_optimizer_is_refused(tmp_path):
    _run(tmp_path, _config(1, optimizer="adam"), _three_nodes())

    with pytest.raises(ConfigError, match="checkpoint's server optimizer is 'adam'"):
        _run(tmp_path, _config(2, optimizer="yogi"), _three_nodes(), resume=True)


def test_an_abandoned_round_does_not_move_the_model_or_the_optimizer(tmp_path):
    skipping = {1: VALUES[1], 2: VALUES[3]}  # the same aggregates without the abandoned round
    script = {n: _scripted(n) for n in (1, 2, 3)}
    crash_in_round_2 = {
        1: script[1],
        **{n: _round_2_crashes(script[n]) for n in (2, 3)},
    }

    coordinator, abandoned = _run(tmp_path / "a", _config(3, optimizer="adam", lr=0.1), crash_in_round_2)
    _, straight = _run(
        tmp_path / "b", _config(2, optimizer="adam", lr=0.1), {n: _scripted(n, skipping) for n in (1, 2, 3)}
    )

    assert [r["status"] for r in coordinator.history] == ["ok", "abandoned", "ok"]
    _assert_same_weights(abandoned.weights, straight.weights)
    assert abandoned.optimizer.step == straight.optimizer.step == 2
    _assert_same_weights(abandoned.optimizer.second_moment, straight.optimizer.second_moment)


def _round_2_crashes(script: Script) -> Script:
    def reply(message: Message) -> Message | None:
        if int(message.content.config_records[CONFIG]["server-round"]) == 2:
            return _crashed(message)
        return script(message)

    return reply


def test_a_step_the_optimizer_cannot_take_abandons_the_round_and_keeps_the_model(tmp_path):
    # w + delta is finite (the plaintext round accepts the mean), lr * m / (sqrt(v) + tau) is not
    config = _config(1, optimizer="adam", lr=1e39)
    torch.manual_seed(config.seed)
    initial = to_arrays(build_model("logreg", (2,), 2))

    coordinator, checkpoint = _run(tmp_path, config, _three_nodes())

    record = coordinator.history[0]
    assert record["status"] == "abandoned" and "not finite" in record["message"]
    _assert_same_weights(checkpoint.weights, initial)
    assert checkpoint.optimizer == ServerOptimizerState("adam")


def test_the_default_server_step_is_exactly_w_plus_delta(tmp_path):
    config = _config(1)
    torch.manual_seed(config.seed)
    initial = to_arrays(build_model("logreg", (2,), 2))
    outcome_delta = {
        k: (VALUES[1] * 2 * np.linspace(-1.0, 2.0, v.size).reshape(v.shape)).astype(np.float32)
        for k, v in initial.items()
    }  # the mean of nodes 1..3 (equal weights): 2 * VALUES[1] * pattern

    _, checkpoint = _run(tmp_path, config, _three_nodes())

    _assert_same_weights(checkpoint.weights, {k: initial[k] + outcome_delta[k] for k in initial})


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adagrad", "adam", "yogi"])
def test_plaintext_and_secure_rounds_with_the_same_aggregates_give_the_same_model(optimizer):
    plain = run_plain({1: update(0.5), 2: update(1.5), 3: update(-1.0)})
    secure = run_secure({1: SecAggNode(0.5), 2: SecAggNode(1.5), 3: SecAggNode(-1.0)})
    assert plain.status == secure.status == "ok" and plain.extra != secure.extra
    aggregates = [{k: np.full_like(v, value) for k, v in WEIGHTS.items()} for value in (0.3, -0.7, 0.05)]
    config = ServerConfig(optimizer=optimizer, lr=0.2)

    models = []
    for outcome in (plain, secure):
        weights, state = dict(WEIGHTS), ServerOptimizerState(optimizer)
        for rnd, aggregate in enumerate(aggregates, start=1):
            round_outcome = dataclasses.replace(outcome, delta=aggregate)
            weights, state = next_model(weights, round_outcome, state, config=config, rnd=rnd)
        models.append((weights, state))

    (plain_weights, plain_state), (secure_weights, secure_state) = models
    _assert_same_weights(plain_weights, secure_weights)
    assert plain_state.step == secure_state.step == 3
    _assert_same_weights(plain_state.second_moment, secure_state.second_moment)
    assert not np.array_equal(plain_weights["w"], WEIGHTS["w"])


def test_a_secure_run_steps_the_optimizer_like_a_plaintext_run_up_to_the_secagg_error(tmp_path):
    nodes = {1: 0.5, 2: 1.5, 3: -1.0}
    plain_script = {
        n: reply_with(to_record(_logreg_shaped(v)), {"num-examples": 10}) for n, v in nodes.items()
    }
    secure_config = _config(3, optimizer="adam", lr=0.1).replace({"secagg.enabled": True})

    _, plain = _run(tmp_path / "plain", _config(3, optimizer="adam", lr=0.1), plain_script)
    coordinator, secure = _run(
        tmp_path / "secure", secure_config, {n: SecAggNode(v) for n, v in nodes.items()}
    )

    assert [r["status"] for r in coordinator.history] == ["ok"] * 3
    assert all("secagg-error-bound" in r for r in coordinator.history)
    assert secure.optimizer.step == plain.optimizer.step == 3
    for name in plain.weights:
        np.testing.assert_allclose(secure.weights[name], plain.weights[name], atol=1e-4)


def _logreg_shaped(value: float) -> dict[str, np.ndarray]:
    """A delta of ``value`` everywhere for the 2-feature logreg (SecAggNode sends as many values)."""
    return {"1.weight": np.full((2, 2), value, np.float32), "1.bias": np.full(2, value, np.float32)}
