"""summary.json and the report of a deployed run say what the run did: rounds that released an
aggregate, the nodes it found, and only numbers the server knows (issue 15)."""

import json

import numpy as np
from coordinator_builders import ScriptedGrid, node_config
from flwr.app import Error, Message, MetricRecord, RecordDict

from fedsys.config import RunConfig
from fedsys.coordinator.checkpoint import load_checkpoint
from fedsys.coordinator.loop import Coordinator
from fedsys.report.document import HOLDERS_OWN, key_numbers, write_report
from fedsys.report.runs import load_run
from fedsys.wire import ARRAYS, CONFIG, METRICS, from_record, to_record


def _holder(node: int, *, crash_in: int = 0):
    """A holder that shares its epsilon (0.5 per round it trains) and crashes in round ``crash_in``."""

    def reply(message: Message) -> Message:
        rnd = int(message.content.config_records[CONFIG]["server-round"])
        if rnd == crash_in:
            return Message(Error(code=1, reason="holder died"), reply_to=message)
        weights = from_record(message.content.array_records[ARRAYS])
        delta = {k: np.full_like(v, 0.01 * node) for k, v in weights.items()}
        metrics = MetricRecord({"num-examples": 10, "epsilon": 0.5 * rnd + 0.1 * node})
        return Message(RecordDict({ARRAYS: to_record(delta), METRICS: metrics}), reply_to=message)

    return reply


def _deployed_run(run_dir, script, **overrides):
    config = node_config(
        **{
            "num-rounds": 3,
            "sampling.min-clients": 3,
            "simulation.num-clients": 10,  # the scenario default a deployed run must not report
            **overrides,
        }
    )
    Coordinator(ScriptedGrid(script), config, run_dir, simulated=False).run()  # type: ignore[arg-type]
    return json.loads((run_dir / "summary.json").read_text())


def test_an_abandoned_round_is_not_counted_as_completed(tmp_path):
    script = {1: _holder(1), 2: _holder(2, crash_in=2), 3: _holder(3)}

    summary = _deployed_run(tmp_path / "run", script)

    statuses = [json.loads(line)["status"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert statuses == ["ok", "abandoned", "ok"]
    assert summary["rounds-completed"] == statuses.count("ok") == 2
    assert summary["rounds-abandoned"] == 1 and summary["rounds-planned"] == 3
    row = key_numbers(load_run(tmp_path / "run"))
    assert row["rounds"] == "2/3, 1 abandoned"
    assert (row["rounds-completed"], row["rounds-abandoned"]) == (2, 1)


def test_a_deployed_run_reports_its_nodes_and_the_holders_own_noise_and_budget(tmp_path):
    script = {node: _holder(node) for node in (4, 7)}

    summary = _deployed_run(tmp_path / "run", script, **{"sampling.min-clients": 2, "dp.target-epsilon": 8.0})
    report = write_report([load_run(tmp_path / "run")], tmp_path / "report")

    assert summary["clients-seen"] == 2 and summary["simulated"] is False
    assert load_checkpoint(tmp_path / "run").strategy["clients-seen"] == ["4", "7"]
    (row,) = json.loads(report.numbers.read_text())["runs"]
    assert row["clients"] == "2 (2 per round)"
    assert row["dp"] == "σ set by each holder for ε 8, C 1"
    assert row["budget-max-epsilon"] == row["target-delta"] == HOLDERS_OWN
    assert row["final-epsilon"] == summary["epsilon-max"] == 0.5 * 3 + 0.1 * 7
    assert row["device"] == row["resources"] == HOLDERS_OWN
    text = report.markdown.read_text()
    assert "central test set" not in text and "Ray" not in text
    assert "| 2 (2 per round) |" in text


class _JoiningGrid(ScriptedGrid):
    """Node 3 connects only once the first round's messages are out."""

    def get_node_ids(self):
        return [n for n in self.script if n != 3 or self.count > 0]


def test_a_node_that_joins_mid_run_is_counted_among_the_clients_seen(tmp_path):
    config = node_config(**{"num-rounds": 2, "dp.enabled": False})
    grid = _JoiningGrid({node: _holder(node) for node in (1, 2, 3)})

    Coordinator(grid, config, tmp_path / "run", simulated=False).run()  # type: ignore[arg-type]

    assert json.loads((tmp_path / "run" / "summary.json").read_text())["clients-seen"] == 3
    assert key_numbers(load_run(tmp_path / "run"))["clients"] == "3 (2–3 per round)"


def test_a_fixed_noise_multiplier_is_the_one_deployed_holders_use(tmp_path):
    script = {node: _holder(node) for node in (1, 2)}

    _deployed_run(tmp_path / "run", script, **{"sampling.min-clients": 2, "dp.noise-multiplier": 1.3})

    assert key_numbers(load_run(tmp_path / "run"))["dp"] == "σ 1.3, C 1"


def test_config_toml_holders_and_a_resume_name_the_partition_that_was_used(tmp_path):
    grid = ScriptedGrid({node: _holder(node) for node in (1, 2)})
    config = RunConfig().replace(
        {
            "num-rounds": 1,
            "dataset": "digits",
            "model": "logreg",
            "partition": "auto",
            "device": "cpu",
            "dp.enabled": False,
            "secagg.enabled": False,
            "simulation.num-clients": 2,
        }
    )

    Coordinator(grid, config, tmp_path / "run", simulated=True).run()  # type: ignore[arg-type]

    written = RunConfig.from_toml(tmp_path / "run" / "config.toml")
    assert written.partition == config.resolved_partition() == "dirichlet:0.5"
    assert written == config.replace({"partition": "dirichlet:0.5"})
    sent = {m.content.config_records[CONFIG]["partition"] for m in grid.sent}
    assert sent == {"dirichlet:0.5"}
    resumed = Coordinator(grid, written, tmp_path / "run", simulated=True, resume=True)  # type: ignore[arg-type]
    summary = resumed.run()
    assert (summary["rounds-completed"], summary["clients-seen"]) == (1, 2) and resumed.config == written
