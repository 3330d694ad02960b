"""Secure aggregation through the real Flower simulation engine, including faulty clients."""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsys.config import RunConfig
from fedsys.data import simulated_client_data
from fedsys.models import build_model, load_weights
from fedsys.node import handlers, secure
from fedsys.results import read_metrics
from fedsys.wire import ARRAYS
from simulations.harness import local_settings, run_scenario

pytestmark = pytest.mark.integration


def _config(**extra):
    return RunConfig().replace(
        {
            "num-rounds": 1,
            "simulation.num-clients": 10,
            "sampling.clients-per-round": 10,
            "sampling.min-clients": 2,
            "dp.enabled": False,
            "train.lr": 0.3,
            "train.momentum": 0.0,
            "train.local-epochs": 1,
            "secagg.clip-range": 2.0,
            "seed": 11,
            **extra,
        }
    )


def _weights(run):
    return {k: v.numpy() for k, v in torch.load(run / "model.pt", weights_only=True).items()}


def _faulty_app(config: RunConfig, fault: Callable[[str, int], str | None]) -> ClientApp:
    """fedsys' own handlers, with ``fault(stage, partition)`` deciding to crash or cheat."""
    own = local_settings(config)
    app = ClientApp()

    def wrap(action, handler):
        def run(message: Message, context: Context) -> Message:
            if action == "secagg_setup":  # remember which partition this node plays this round
                context.state.config_records["test"] = ConfigRecord(
                    {"partition": handlers.assigned_partition(message)}
                )
            what = fault(action, int(context.state.config_records["test"]["partition"]))
            if what == "crash":
                raise RuntimeError(f"client died during {action}")
            if what == "plaintext":  # a cheating client sends its update in the clear
                return Message(RecordDict({ARRAYS: message.content.array_records[ARRAYS]}), reply_to=message)
            return handler(message, context, own)

        return run

    for action, handler in secure.HANDLERS.items():
        app.train(action)(wrap(action, handler))
    return app


def test_secure_aggregate_equals_plaintext_fedavg_within_the_quantisation_bound(tmp_path):
    run_scenario(_config(**{"secagg.enabled": False}), tmp_path / "plain")
    run_scenario(_config(), tmp_path / "secure")

    record = read_metrics(tmp_path / "secure")[0]
    plain, secure_w = _weights(tmp_path / "plain"), _weights(tmp_path / "secure")
    worst = max(float(np.max(np.abs(plain[k] - secure_w[k]))) for k in plain)
    assert record["clients-succeeded"] == 10 and record["status"] == "ok"
    assert 0 < worst <= record["secagg-error-bound"] + 1e-6  # float32 storage of the weights
    # federated evaluation: the secure sum of the holders' evaluation sums is the plaintext one
    plain_record = read_metrics(tmp_path / "plain")[0]
    federated = {k: v for k, v in record.items() if k.startswith("federated-")}
    assert federated and federated == {k: v for k, v in plain_record.items() if k.startswith("federated-")}
    # and the final, evaluation-only exchange scores the released model on every holder's test split
    for run, weights in (("secure", secure_w), ("plain", plain)):
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        correct, examples, loss = _pooled_evaluation(_config(), weights)
        assert summary["final-federated-examples"] == examples
        assert summary["final-federated-accuracy"] == correct / examples
        assert summary["final-federated-loss"] == pytest.approx(loss / examples, abs=1e-3)
        assert summary["final-accuracy-source"] == "central"


def _pooled_evaluation(config: RunConfig, weights) -> tuple[int, int, float]:
    """Correct predictions, examples and loss sum of ``weights`` over all holders' test splits,
    recomputed here from the partitions (not through fedsys.evaluation)."""
    correct, examples, loss = 0, 0, 0.0
    n = config.simulation.num_clients
    for partition in range(n):
        test = simulated_client_data(config, partition_id=partition, num_partitions=n).test
        model = build_model(config.model, test.feature_shape, test.num_classes)
        load_weights(model, weights, source="test")
        with torch.no_grad():
            logits = model.eval()(torch.from_numpy(test.x))
            losses = torch.nn.functional.cross_entropy(logits, torch.from_numpy(test.y), reduction="none")
        correct += int((logits.argmax(1).numpy() == test.y).sum())
        examples += len(test.y)
        loss += float(losses.clamp(max=config.evaluation.loss_bound).sum())
    return correct, examples, loss


@pytest.mark.parametrize("stage", ["secagg_share", "secagg_mask", "secagg_unmask"])
def test_clients_dying_at_a_stage_still_give_an_aggregate(tmp_path, stage):
    config = _config(**{"simulation.num-clients": 5, "sampling.clients-per-round": 5})
    app = _faulty_app(config, lambda action, pid: "crash" if action == stage and pid in (1, 3) else None)

    run_scenario(config, tmp_path / "run", client_app=app)

    record = read_metrics(tmp_path / "run")[0]
    assert record["status"] == "ok"
    assert record["clients-failed"] == (2 if stage != "secagg_unmask" else 0)
    assert record["clients-succeeded"] == (3 if stage != "secagg_unmask" else 5)


def test_below_threshold_the_round_is_abandoned_and_nothing_released(tmp_path):
    config = _config(**{"simulation.num-clients": 4, "sampling.clients-per-round": 4})
    app = _faulty_app(config, lambda action, pid: "crash" if action == "secagg_mask" and pid != 0 else None)

    run_scenario(config, tmp_path / "run", client_app=app)

    record = read_metrics(tmp_path / "run")[0]
    assert record["status"] == "abandoned"
    assert "nothing released" in record["message"]
    assert "accuracy" in record  # the unchanged initial model was still evaluated


def test_the_server_refuses_a_plaintext_update_in_secure_mode(tmp_path):
    config = _config(**{"simulation.num-clients": 4, "sampling.clients-per-round": 4})
    app = _faulty_app(
        config, lambda action, pid: "plaintext" if action == "secagg_mask" and pid == 2 else None
    )

    run_scenario(config, tmp_path / "run", client_app=app)

    record = read_metrics(tmp_path / "run")[0]
    assert record["status"] == "ok"
    assert record["clients-succeeded"] == 3 and record["clients-failed"] == 1


def test_dp_with_secure_aggregation_matches_dp_alone_on_digits(tmp_path):
    scenario = RunConfig.from_toml(Path(__file__).parents[2] / "simulations" / "digits.toml")
    scenario = scenario.replace({"num-rounds": 10})

    with_secagg = run_scenario(scenario, tmp_path / "secure")
    without = run_scenario(scenario.replace({"secagg.enabled": False}), tmp_path / "plain")

    assert with_secagg["final-accuracy"] > 0.6
    assert abs(with_secagg["final-accuracy"] - without["final-accuracy"]) <= 0.01
    assert with_secagg["epsilon-max"] == pytest.approx(without["epsilon-max"])
    # with DP on, non-private statistics of the clients' data never reach the server
    for run in ("secure", "plain"):
        assert not any("train-loss" in r for r in read_metrics(tmp_path / run))
