"""Server optimizers against the papers' equations, written out by hand for three steps each."""

import numpy as np
import pytest

from fedsys.config import RunConfig, ServerConfig
from fedsys.errors import AbortedRoundError, ConfigError
from fedsys.strategy import ServerOptimizerState, apply_server_optimizer, resume_optimizer_state

X0 = {"w": np.array([[0.5, -1.0], [2.0, 0.0]], np.float32), "b": np.array([0.25, -0.75], np.float32)}
# Mixed signs and sizes, a zero, and coordinates whose square grows or shrinks from step to step
# (Yogi's sign(v - delta**2) takes both values).
DELTAS = [
    {"w": np.array([[0.3, -2.0], [1e-4, 0.0]], np.float32), "b": np.array([0.05, -0.5], np.float32)},
    {"w": np.array([[-0.1, -1.5], [0.8, 0.0]], np.float32), "b": np.array([0.6, 0.01], np.float32)},
    {"w": np.array([[0.2, 3.0], [-0.02, 0.0]], np.float32), "b": np.array([-0.3, 0.02], np.float32)},
]


def _trajectory(config: ServerConfig, deltas=DELTAS, weights=X0):
    """The global model after each step."""
    state, out = ServerOptimizerState(config.optimizer), []
    for delta in deltas:
        weights, state = apply_server_optimizer(weights, delta, state, config=config)
        out.append(weights)
    return out, state


def _f64(arrays):
    return {k: v.astype(np.float64) for k, v in arrays.items()}


def _assert_models_match(got, expected):
    assert len(got) == len(expected)
    for step, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert set(g) == set(e)
        for name in e:
            assert g[name].dtype == np.float32
            np.testing.assert_allclose(g[name], e[name], rtol=1e-6, atol=1e-7, err_msg=f"step {step + 1}")


def test_the_default_is_fedavg_exactly_w_plus_delta():
    config = RunConfig().server
    expected, weights = [], X0
    for delta in DELTAS:
        weights = {k: weights[k] + delta[k] for k in weights}
        expected.append(weights)

    got, state = _trajectory(config)

    assert config.optimizer == "sgd" and config.lr == 1.0
    for g, e in zip(got, expected, strict=True):
        assert all(g[k].dtype == np.float32 and np.array_equal(g[k], e[k]) for k in e)
    assert state.step == 3 and not state.first_moment and not state.second_moment


def test_server_sgd_scales_the_delta_by_the_server_learning_rate():
    lr = 0.3
    d1, d2, d3 = DELTAS
    x1 = {k: X0[k] + np.float32(lr) * d1[k] for k in X0}
    x2 = {k: x1[k] + np.float32(lr) * d2[k] for k in X0}
    x3 = {k: x2[k] + np.float32(lr) * d3[k] for k in X0}

    got, _ = _trajectory(ServerConfig(optimizer="sgd", lr=lr))

    _assert_models_match(got, [x1, x2, x3])


def test_fedavgm_follows_hsu_et_al():
    # v = beta * v + delta, x = x + lr * v, from v = 0 (Hsu et al. 2019, FedAvgM)
    lr, beta = 0.5, 0.7
    x0, (d1, d2, d3) = _f64(X0), [_f64(d) for d in DELTAS]
    v1 = {k: d1[k] for k in x0}
    x1 = {k: x0[k] + lr * v1[k] for k in x0}
    v2 = {k: beta * v1[k] + d2[k] for k in x0}
    x2 = {k: x1[k] + lr * v2[k] for k in x0}
    v3 = {k: beta * v2[k] + d3[k] for k in x0}
    x3 = {k: x2[k] + lr * v3[k] for k in x0}

    got, state = _trajectory(ServerConfig(optimizer="momentum", lr=lr, momentum=beta))

    _assert_models_match(got, [x1, x2, x3])
    assert all(np.allclose(state.first_moment[k], v3[k], rtol=1e-12) for k in x0)
    assert not state.second_moment


def test_fedadagrad_follows_reddi_algorithm_2():
    lr, b1, tau = 0.1, 0.8, 0.1
    x0, (d1, d2, d3) = _f64(X0), [_f64(d) for d in DELTAS]
    m1 = {k: (1 - b1) * d1[k] for k in x0}
    v1 = {k: tau**2 + d1[k] ** 2 for k in x0}
    x1 = {k: x0[k] + lr * m1[k] / (np.sqrt(v1[k]) + tau) for k in x0}
    m2 = {k: b1 * m1[k] + (1 - b1) * d2[k] for k in x0}
    v2 = {k: v1[k] + d2[k] ** 2 for k in x0}
    x2 = {k: x1[k] + lr * m2[k] / (np.sqrt(v2[k]) + tau) for k in x0}
    m3 = {k: b1 * m2[k] + (1 - b1) * d3[k] for k in x0}
    v3 = {k: v2[k] + d3[k] ** 2 for k in x0}
    x3 = {k: x2[k] + lr * m3[k] / (np.sqrt(v3[k]) + tau) for k in x0}

    got, state = _trajectory(ServerConfig(optimizer="adagrad", lr=lr, beta1=b1, beta2=0.5, tau=tau))

    _assert_models_match(got, [x1, x2, x3])
    assert all(np.allclose(state.second_moment[k], v3[k], rtol=1e-12) for k in x0)


def test_fedadam_follows_reddi_algorithm_2():
    lr, b1, b2, tau = 0.1, 0.8, 0.95, 0.1
    x0, (d1, d2, d3) = _f64(X0), [_f64(d) for d in DELTAS]
    m1 = {k: (1 - b1) * d1[k] for k in x0}
    v1 = {k: b2 * tau**2 + (1 - b2) * d1[k] ** 2 for k in x0}
    x1 = {k: x0[k] + lr * m1[k] / (np.sqrt(v1[k]) + tau) for k in x0}
    m2 = {k: b1 * m1[k] + (1 - b1) * d2[k] for k in x0}
    v2 = {k: b2 * v1[k] + (1 - b2) * d2[k] ** 2 for k in x0}
    x2 = {k: x1[k] + lr * m2[k] / (np.sqrt(v2[k]) + tau) for k in x0}
    m3 = {k: b1 * m2[k] + (1 - b1) * d3[k] for k in x0}
    v3 = {k: b2 * v2[k] + (1 - b2) * d3[k] ** 2 for k in x0}
    x3 = {k: x2[k] + lr * m3[k] / (np.sqrt(v3[k]) + tau) for k in x0}

    got, state = _trajectory(ServerConfig(optimizer="adam", lr=lr, beta1=b1, beta2=b2, tau=tau))

    _assert_models_match(got, [x1, x2, x3])
    assert all(np.allclose(state.first_moment[k], m3[k], rtol=1e-12) for k in x0)
    assert all(np.allclose(state.second_moment[k], v3[k], rtol=1e-12) for k in x0)


def test_fedyogi_follows_reddi_algorithm_2():
    lr, b1, b2, tau = 0.1, 0.8, 0.95, 0.1
    x0, (d1, d2, d3) = _f64(X0), [_f64(d) for d in DELTAS]
    m1 = {k: (1 - b1) * d1[k] for k in x0}
    v1 = {k: tau**2 - (1 - b2) * d1[k] ** 2 * np.sign(tau**2 - d1[k] ** 2) for k in x0}
    x1 = {k: x0[k] + lr * m1[k] / (np.sqrt(v1[k]) + tau) for k in x0}
    m2 = {k: b1 * m1[k] + (1 - b1) * d2[k] for k in x0}
    v2 = {k: v1[k] - (1 - b2) * d2[k] ** 2 * np.sign(v1[k] - d2[k] ** 2) for k in x0}
    x2 = {k: x1[k] + lr * m2[k] / (np.sqrt(v2[k]) + tau) for k in x0}
    m3 = {k: b1 * m2[k] + (1 - b1) * d3[k] for k in x0}
    v3 = {k: v2[k] - (1 - b2) * d3[k] ** 2 * np.sign(v2[k] - d3[k] ** 2) for k in x0}
    x3 = {k: x2[k] + lr * m3[k] / (np.sqrt(v3[k]) + tau) for k in x0}

    got, state = _trajectory(ServerConfig(optimizer="yogi", lr=lr, beta1=b1, beta2=b2, tau=tau))

    _assert_models_match(got, [x1, x2, x3])
    assert all(np.allclose(state.second_moment[k], v3[k], rtol=1e-12) for k in x0)
    signs = np.sign(v1["w"] - d2["w"] ** 2)  # both branches of Yogi's update are exercised
    assert (signs > 0).any() and (signs < 0).any()


@pytest.mark.parametrize("optimizer", ["adagrad", "adam", "yogi"])
def test_adaptive_steps_with_the_default_hyper_parameters(optimizer):
    # defaults: beta1 0.9, beta2 0.99, tau 1e-3, lr 1; first step from m = 0, v = tau**2
    b1, b2, tau = 0.9, 0.99, 1e-3
    d = _f64(DELTAS[0])
    v1 = {
        "adagrad": {k: tau**2 + d[k] ** 2 for k in d},
        "adam": {k: b2 * tau**2 + (1 - b2) * d[k] ** 2 for k in d},
        "yogi": {k: tau**2 - (1 - b2) * d[k] ** 2 * np.sign(tau**2 - d[k] ** 2) for k in d},
    }[optimizer]
    x1 = {k: X0[k] + (1 - b1) * d[k] / (np.sqrt(v1[k]) + tau) for k in d}

    got, _ = _trajectory(RunConfig().replace({"server.optimizer": optimizer}).server, deltas=DELTAS[:1])

    _assert_models_match(got, [x1])


def test_a_step_that_is_not_finite_is_refused_and_nothing_changes():
    config = ServerConfig(optimizer="adam", lr=1e39)  # |m / (sqrt(v) + tau)| ~ 1 per coordinate
    weights, state = _trajectory(ServerConfig(optimizer="adam"), deltas=DELTAS[:1])
    weights = weights[-1]
    before = {k: v.copy() for k, v in state.first_moment.items()}

    with pytest.raises(AbortedRoundError, match="not finite"):
        apply_server_optimizer(weights, DELTAS[1], state, config=config)

    assert state.step == 1
    assert all(np.array_equal(state.first_moment[k], before[k]) for k in before)


def test_an_overflowing_server_sgd_step_is_refused():
    weights = {"w": np.full(2, 3e38, np.float32)}

    with pytest.raises(AbortedRoundError, match="next 'w'"):
        apply_server_optimizer(
            weights, {"w": np.full(2, 3e38, np.float32)}, ServerOptimizerState(), config=ServerConfig(lr=0.5)
        )


def test_the_state_of_another_optimizer_is_refused():
    with pytest.raises(ConfigError, match="'adam'.*'yogi'"):
        apply_server_optimizer(
            X0, DELTAS[0], ServerOptimizerState("yogi"), config=ServerConfig(optimizer="adam")
        )


def test_resuming_checks_the_optimizer_and_the_moments():
    adam = ServerConfig(optimizer="adam")
    _, state = _trajectory(adam, deltas=DELTAS[:2])

    assert resume_optimizer_state(state, X0, config=adam) is state
    assert resume_optimizer_state(None, X0, config=adam) == ServerOptimizerState("adam")
    with pytest.raises(
        ConfigError, match="checkpoint's server optimizer is 'adam'.*server.optimizer is 'yogi'"
    ):
        resume_optimizer_state(state, X0, config=ServerConfig(optimizer="yogi"))
    lost = ServerOptimizerState("adam", 2, state.first_moment, {})
    with pytest.raises(ConfigError, match="second moment covers"):
        resume_optimizer_state(lost, X0, config=adam)
    bent = ServerOptimizerState("adam", 2, state.first_moment, {**state.second_moment, "b": np.ones(3)})
    with pytest.raises(ConfigError, match="second moment of 'b' does not fit"):
        resume_optimizer_state(bent, X0, config=adam)
