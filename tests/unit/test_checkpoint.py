import json

import numpy as np
import pytest

from fedsys.config import ServerConfig
from fedsys.coordinator.checkpoint import ServerState, load_checkpoint, save_checkpoint
from fedsys.errors import ConfigError
from fedsys.strategy import (
    ServerOptimizerState,
    apply_delta,
    apply_server_optimizer,
    resume_optimizer_state,
    weighted_mean,
)


def test_checkpoint_round_trips_weights_rng_and_history(tmp_path):
    rng = np.random.default_rng(5)
    rng.random(3)
    state = ServerState(
        round=4,
        run_id="abc",
        weights={"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
        rng_state=rng.bit_generator.state,
        history=[{"round": 1, "accuracy": 0.5}],
        exhausted=["3"],
    )

    save_checkpoint(tmp_path, state)
    loaded = load_checkpoint(tmp_path)

    restored = np.random.default_rng(0)
    restored.bit_generator.state = loaded.rng_state
    assert loaded.round == 4 and loaded.run_id == "abc" and loaded.exhausted == ["3"]
    assert np.array_equal(loaded.weights["w"], state.weights["w"])
    assert restored.random() == rng.random()
    assert loaded.history == state.history
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]  # no temp files left


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path, ServerState(1, "r", {"w": np.zeros(2, np.float32)}, {}))

    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, ServerState(2, "r", {"w": np.zeros(2, np.float32)}, {"x": object()}))

    assert load_checkpoint(tmp_path).round == 1
    assert len(list(tmp_path.iterdir())) == 1


def test_resume_without_checkpoint_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        load_checkpoint(tmp_path)


def test_weighted_mean_weights_by_examples():
    deltas = [{"w": np.array([1.0, 0.0])}, {"w": np.array([0.0, 1.0])}]

    mean = weighted_mean(deltas, [3, 1])

    assert np.allclose(mean["w"], [0.75, 0.25])
    assert np.allclose(apply_delta({"w": np.ones(2, np.float32)}, mean)["w"], [1.75, 1.25])


_SCRIPTED = [
    {"w": np.array([0.5, -1.0, 1e-3], np.float32), "b": np.array([2.0], np.float32)},
    {"w": np.array([-0.2, -0.4, 0.0], np.float32), "b": np.array([0.1], np.float32)},
    {"w": np.array([0.7, 0.3, -0.05], np.float32), "b": np.array([-1.5], np.float32)},
    {"w": np.array([0.1, 0.1, 0.2], np.float32), "b": np.array([0.4], np.float32)},
    {"w": np.array([-0.6, 0.9, 0.0], np.float32), "b": np.array([0.02], np.float32)},
]
_START = {"w": np.array([1.0, 0.0, -1.0], np.float32), "b": np.array([0.5], np.float32)}


def _steps(weights, state, deltas, config):
    for delta in deltas:
        weights, state = apply_server_optimizer(weights, delta, state, config=config)
    return weights, state


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adagrad", "adam", "yogi"])
@pytest.mark.parametrize("k", [1, 3])
def test_a_run_resumed_from_a_checkpoint_matches_a_straight_run(tmp_path, optimizer, k):
    config = ServerConfig(optimizer=optimizer, lr=0.5, tau=0.05)
    fresh = ServerOptimizerState(optimizer)
    straight, straight_state = _steps(_START, fresh, _SCRIPTED, config)

    weights, state = _steps(_START, fresh, _SCRIPTED[:k], config)
    save_checkpoint(tmp_path, ServerState(k, "r", weights, {}, optimizer=state))
    loaded = load_checkpoint(tmp_path)
    state = resume_optimizer_state(loaded.optimizer, loaded.weights, config=config)
    resumed, resumed_state = _steps(loaded.weights, state, _SCRIPTED[k:], config)

    assert set(loaded.weights) == set(_START)  # the moments are not read back as weights
    assert all(np.array_equal(resumed[name], straight[name]) for name in straight)
    assert (resumed_state.optimizer, resumed_state.step) == (optimizer, len(_SCRIPTED))
    for mine, theirs in (
        (resumed_state.first_moment, straight_state.first_moment),
        (resumed_state.second_moment, straight_state.second_moment),
    ):
        assert set(mine) == set(theirs)
        assert all(mine[k].dtype == theirs[k].dtype and np.array_equal(mine[k], theirs[k]) for k in mine)


def test_optimizer_moments_are_arrays_in_the_npz_not_json(tmp_path):
    config = ServerConfig(optimizer="adam")
    weights, state = _steps(_START, ServerOptimizerState("adam"), _SCRIPTED[:2], config)

    save_checkpoint(tmp_path, ServerState(2, "r", weights, {}, optimizer=state))

    with np.load(tmp_path / "checkpoint.npz") as data:
        doc = json.loads(str(data["__fedsys_state__"]))
        moments = sorted(name for name in data.files if name.startswith("__fedsys_server_"))
    assert doc["server-optimizer"] == {"optimizer": "adam", "step": 2}
    assert moments == [f"__fedsys_server_{m}__:{name}" for m in ("m", "v") for name in ("b", "w")]


def test_a_checkpoint_written_before_server_optimizers_still_loads(tmp_path):
    doc = {"round": 3, "run_id": "old", "rng_state": {}, "history": [], "exhausted": [], "strategy": {}}
    with (tmp_path / "checkpoint.npz").open("wb") as fh:
        np.savez(fh, **_START, __fedsys_state__=np.array(json.dumps(doc)))

    loaded = load_checkpoint(tmp_path)

    assert loaded.round == 3 and loaded.optimizer is None
    assert set(loaded.weights) == {"w", "b"} and np.array_equal(loaded.weights["w"], _START["w"])
    config = ServerConfig(optimizer="momentum")
    assert resume_optimizer_state(loaded.optimizer, loaded.weights, config=config) == ServerOptimizerState(
        "momentum"
    )
