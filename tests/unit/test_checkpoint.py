import numpy as np
import pytest

from fedsys.coordinator.checkpoint import ServerState, load_checkpoint, save_checkpoint
from fedsys.errors import ConfigError
from fedsys.strategy import apply_delta, weighted_mean


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
