"""server.average in the round loop: the average is post-processing of the released iterates
(holders see exactly what they would without it), it is what the server releases (model.pt and
the central evaluation), and it survives a checkpoint and a resume exactly."""

import numpy as np
import pytest
import torch
from coordinator_builders import Script, ScriptedGrid, node_config, trainer

from fedsys.config import RunConfig
from fedsys.coordinator.checkpoint import load_checkpoint
from fedsys.coordinator.loop import Coordinator
from fedsys.results import MODEL_FILE
from fedsys.wire import ARRAYS, CONFIG, from_record

STEPS = {1: 0.5, 2: -0.25, 3: 1.0, 4: 0.1, 5: -0.6}
DECAY = 0.75


def _node(node: int, crash_in: int = 0) -> Script:
    return trainer(node, STEPS, crash_in=crash_in)


def _config(rounds: int, average: str) -> RunConfig:
    return node_config(
        **{
            "num-rounds": rounds,
            "dp.enabled": False,
            "evaluation.federated": False,
            "server.average": average,
            "server.ema-decay": DECAY,
            "server.optimizer": "momentum",
        }
    )


def _run(run_dir, config, *, resume=False, crash_in=0):
    grid = ScriptedGrid({n: _node(n, crash_in if n > 1 else 0) for n in (1, 2, 3)})
    coordinator = Coordinator(grid, config, run_dir, simulated=False, resume=resume, run_id="r")  # type: ignore[arg-type]
    coordinator.run()
    return grid, coordinator


def _model_file(run_dir):
    return {k: v.numpy() for k, v in torch.load(run_dir / MODEL_FILE).items()}


def _sent(grid: ScriptedGrid) -> list[tuple[dict, dict]]:
    """What every holder received: its config record (less the server's own averaging keys, which
    no holder reads) and the model it was sent."""
    server_only = {"server.average", "server.ema-decay"}
    return [
        (
            {k: v for k, v in m.content.config_records[CONFIG].items() if k not in server_only},
            from_record(m.content.array_records[ARRAYS]),
        )
        for m in grid.sent
    ]


def test_holders_receive_exactly_what_they_would_without_averaging(tmp_path):
    plain_grid, _ = _run(tmp_path / "none", _config(4, "none"))
    ema_grid, _ = _run(tmp_path / "ema", _config(4, "ema"))

    plain, ema = _sent(plain_grid), _sent(ema_grid)
    assert len(plain) == len(ema) == 12
    for (plain_config, plain_model), (ema_config, ema_model) in zip(plain, ema, strict=True):
        assert plain_config == ema_config  # same requests, so the same ledger charges
        assert all(np.array_equal(plain_model[k], ema_model[k]) for k in plain_model)
    straight = load_checkpoint(tmp_path / "none").weights
    averaged = load_checkpoint(tmp_path / "ema").weights
    assert all(np.array_equal(straight[k], averaged[k]) for k in straight)  # training is unchanged


def test_the_released_model_is_the_ema_of_the_iterates(tmp_path):
    grid, coordinator = _run(tmp_path, _config(4, "ema"))

    # iterate x_r is what round r + 1 sent (node 1's copy); x_4 is the checkpoint's model
    iterates = [from_record(m.content.array_records[ARRAYS]) for m in grid.sent[3::3]]
    iterates.append(load_checkpoint(tmp_path).weights)
    expected = {k: np.asarray(iterates[0][k], np.float64) for k in iterates[0]}
    for x in iterates[1:]:
        expected = {k: DECAY * expected[k] + (1 - DECAY) * np.asarray(x[k], np.float64) for k in expected}
    released = _model_file(tmp_path)

    assert coordinator.average_state.count == 4
    for k in expected:
        np.testing.assert_array_equal(released[k], expected[k].astype(np.float32))
        assert not np.array_equal(released[k], iterates[-1][k])


def test_without_averaging_the_released_model_is_the_last_iterate(tmp_path):
    _run(tmp_path, _config(3, "none"))

    released, last = _model_file(tmp_path), load_checkpoint(tmp_path).weights

    assert all(np.array_equal(released[k], last[k]) for k in last)
    assert load_checkpoint(tmp_path).average.count == 0


def test_a_resumed_run_keeps_the_average_exactly(tmp_path):
    _run(tmp_path / "straight", _config(5, "ema"))
    _run(tmp_path / "resumed", _config(2, "ema"))
    _run(tmp_path / "resumed", _config(5, "ema"), resume=True)

    straight, resumed = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")

    assert resumed.average.count == straight.average.count == 5
    for k in straight.weights:
        assert resumed.average.weights[k].dtype == np.float64
        assert np.array_equal(resumed.average.weights[k], straight.average.weights[k])
    a, b = _model_file(tmp_path / "straight"), _model_file(tmp_path / "resumed")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_resuming_with_another_averaging_is_refused(tmp_path):
    from fedsys.errors import ConfigError

    _run(tmp_path, _config(1, "ema"))

    with pytest.raises(ConfigError, match="checkpoint's server.average is 'ema'"):
        _run(tmp_path, _config(2, "none"), resume=True)


def test_an_abandoned_round_is_not_folded_into_the_average(tmp_path):
    _, coordinator = _run(tmp_path, _config(3, "ema"), crash_in=2)

    assert [r["status"] for r in coordinator.history] == ["ok", "abandoned", "ok"]
    assert coordinator.average_state.count == 2
