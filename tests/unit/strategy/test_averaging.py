"""The server's iterate average (server.average): EMA maths, what is released, resume checks."""

import numpy as np
import pytest

from fedsys.config import RunConfig, ServerConfig
from fedsys.errors import ConfigError
from fedsys.strategy.averaging import IterateAverage, released_model, resume_average, update_average

ITERATES = [
    {"w": np.array([[1.0, -2.0]], np.float32), "b": np.array([0.5], np.float32)},
    {"w": np.array([[3.0, 0.0]], np.float32), "b": np.array([-1.5], np.float32)},
    {"w": np.array([[-1.0, 4.0]], np.float32), "b": np.array([2.0], np.float32)},
    {"w": np.array([[0.25, 0.5]], np.float32), "b": np.array([0.0], np.float32)},
]


def _folded(config: ServerConfig, iterates=ITERATES) -> IterateAverage:
    state = IterateAverage(config.average)
    for weights in iterates:
        state = update_average(state, weights, config=config)
    return state


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.99])
def test_the_ema_is_the_closed_form_weighted_sum_of_the_iterates(decay):
    config = ServerConfig(average="ema", ema_decay=decay)

    state = _folded(config)

    # closed form: a_T = d^(T-1) x_1 + (1 - d) * sum_{s=2..T} d^(T-s) x_s
    last = len(ITERATES)
    coefficients = [decay ** (last - 1)] + [(1 - decay) * decay ** (last - s) for s in range(2, last + 1)]
    assert sum(coefficients) == pytest.approx(1.0)
    for name in ("w", "b"):
        expected = sum(c * ITERATES[i][name].astype(np.float64) for i, c in enumerate(coefficients))
        np.testing.assert_allclose(state.weights[name], expected, rtol=1e-12, atol=1e-12)
        assert state.weights[name].dtype == np.float64
    assert state.count == last


def test_the_first_released_iterate_starts_the_average():
    config = ServerConfig(average="ema", ema_decay=0.9)

    state = update_average(IterateAverage("ema"), ITERATES[0], config=config)

    assert state.count == 1
    assert all(np.array_equal(state.weights[k], ITERATES[0][k]) for k in ITERATES[0])


def test_the_released_model_is_the_average_in_float32_and_the_iterate_without_one():
    ema = ServerConfig(average="ema", ema_decay=0.5)
    averaged = _folded(ema)
    plain = _folded(ServerConfig())

    released = released_model(averaged, ITERATES[-1])
    unaveraged = released_model(plain, ITERATES[-1])

    assert plain == IterateAverage("none") and not plain.weights
    assert all(v.dtype == np.float32 for v in released.values())
    np.testing.assert_array_equal(released["w"], averaged.weights["w"].astype(np.float32))
    assert not np.array_equal(released["w"], ITERATES[-1]["w"])
    assert all(np.array_equal(unaveraged[k], ITERATES[-1][k]) for k in ITERATES[-1])


def test_updating_leaves_the_previous_state_and_the_weights_untouched():
    config = ServerConfig(average="ema", ema_decay=0.5)
    before = _folded(config, ITERATES[:2])
    kept = {k: v.copy() for k, v in before.weights.items()}
    incoming = {k: v.copy() for k, v in ITERATES[2].items()}

    update_average(before, incoming, config=config)

    assert all(np.array_equal(before.weights[k], kept[k]) for k in kept)
    assert all(np.array_equal(incoming[k], ITERATES[2][k]) for k in incoming)


def test_a_state_of_another_averaging_is_refused():
    with pytest.raises(ConfigError, match="server.average is 'ema', but the average state is 'none'"):
        update_average(IterateAverage("none"), ITERATES[0], config=ServerConfig(average="ema"))


def test_resume_checks_the_averaging_and_the_shapes():
    config = ServerConfig(average="ema", ema_decay=0.8)
    saved = _folded(config)

    assert resume_average(saved, ITERATES[0], config=config) is saved
    assert resume_average(None, ITERATES[0], config=ServerConfig()) == IterateAverage("none")
    with pytest.raises(ConfigError, match="checkpoint's server.average is 'ema'"):
        resume_average(saved, ITERATES[0], config=ServerConfig())
    with pytest.raises(ConfigError, match="checkpoint's server.average is 'none'"):
        resume_average(None, ITERATES[0], config=config)
    bent = IterateAverage("ema", 2, {"w": np.zeros((2, 1)), "b": np.zeros(1)})
    with pytest.raises(ConfigError, match="iterate average of 'w' does not fit the model"):
        resume_average(bent, ITERATES[0], config=config)
    lost = IterateAverage("ema", 2, {"w": np.zeros((1, 2))})
    with pytest.raises(ConfigError, match="iterate average covers"):
        resume_average(lost, ITERATES[0], config=config)
    poisoned = IterateAverage("ema", 2, {"w": np.full((1, 2), np.nan), "b": np.zeros(1)})
    with pytest.raises(ConfigError, match="not finite"):
        resume_average(poisoned, ITERATES[0], config=config)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("server.average", "polyak", "server.average must be one of none, ema, got 'polyak'"),
        ("server.ema-decay", 1.0, "server.ema-decay must be in (0, 1), got 1.0"),
        ("server.ema-decay", 0.0, "server.ema-decay must be in (0, 1), got 0.0"),
        ("server.ema-decay", "0.9", "server.ema-decay must be a number"),
    ],
)
def test_bad_averaging_keys_are_one_line_config_errors(key, value, message):
    with pytest.raises(ConfigError) as err:
        RunConfig().replace({key: value})

    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_averaging_keys_round_trip_through_the_config():
    config = RunConfig().replace({"server.average": "ema", "server.ema-decay": 0.95})

    assert (config.server.average, config.server.ema_decay) == ("ema", 0.95)
    assert RunConfig.from_mapping(config.to_mapping()).server == config.server
    assert RunConfig().server.average == "none"
