"""A deployed run has one id: Flower's, in summary.json, the checkpoint, every holder's request
and SecAgg+'s envelope binding; a simulated run draws its own."""

import json

import numpy as np
from coordinator_builders import WEIGHTS, ScriptedGrid, node_config
from flwr.app import Message, MetricRecord, RecordDict
from secure_builders import SecAggNode

from fedsys.config import RunConfig
from fedsys.coordinator.checkpoint import load_checkpoint
from fedsys.coordinator.loop import Coordinator
from fedsys.coordinator.secure import secagg_run_id, secure_round
from fedsys.wire import ARRAYS, CONFIG, METRICS, from_record, to_record

FLOWER_RUN_ID = "10655336991243890644"  # Flower's run ids are uint64, printed in decimal


def _holder(message: Message) -> Message:
    weights = from_record(message.content.array_records[ARRAYS])
    delta = {k: np.full_like(v, 0.01) for k, v in weights.items()}
    metrics = MetricRecord({"num-examples": 10})
    return Message(RecordDict({ARRAYS: to_record(delta), METRICS: metrics}), reply_to=message)


def _config(**extra):
    return node_config(**{"num-rounds": 1, **extra})


def test_a_deployed_run_uses_flowers_run_id_everywhere(tmp_path):
    grid = ScriptedGrid({1: _holder, 2: _holder})

    Coordinator(grid, _config(), tmp_path / "run", simulated=False, run_id=FLOWER_RUN_ID).run()  # type: ignore[arg-type]

    assert json.loads((tmp_path / "run" / "summary.json").read_text())["run-id"] == FLOWER_RUN_ID
    assert load_checkpoint(tmp_path / "run").run_id == FLOWER_RUN_ID
    assert {m.content.config_records[CONFIG]["run-id"] for m in grid.sent} == {FLOWER_RUN_ID}


def test_without_a_given_id_a_run_draws_its_own(tmp_path):
    grid = ScriptedGrid({1: _holder, 2: _holder})

    summary = Coordinator(grid, _config(), tmp_path / "run", simulated=False).run()  # type: ignore[arg-type]

    assert len(summary["run-id"]) == 16 and summary["run-id"] != FLOWER_RUN_ID


def test_secagg_binds_envelopes_to_flowers_run_id_or_to_fedsys_hex_id():
    assert secagg_run_id(FLOWER_RUN_ID) == 10655336991243890644
    assert secagg_run_id("00000000000000ff") == 255  # fedsys' own: 16 hex digits
    assert secagg_run_id("00ab") == 0xAB


def test_a_secagg_round_runs_under_a_twenty_digit_flower_run_id():
    nodes = {node: SecAggNode(1.0) for node in (1, 2, 3)}
    config = RunConfig().replace({"sampling.min-clients": 2, "dp.enabled": False})
    assignment = {node: str(node) for node in nodes}

    outcome = secure_round(
        ScriptedGrid(nodes), config, assignment, WEIGHTS, 1, FLOWER_RUN_ID, simulated=False
    )  # type: ignore[arg-type]

    assert outcome.status == "ok", outcome.message
    assert np.allclose(outcome.delta["w"], 1.0, atol=1e-3)
