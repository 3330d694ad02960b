"""Malicious clients against SecAgg+ through the real Flower simulation engine.

False accusations (a client's claim that it could not open honest peers' envelopes) must not exclude
anyone, and a client whose masked input is malformed is dropped while the round completes.
"""

from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedsys.config import RunConfig
from fedsys.node import handlers, secure
from fedsys.results import read_metrics
from fedsys.wire import CONFIG, MASKED, SECAGG, to_record
from simulations.harness import local_settings, run_scenario

pytestmark = pytest.mark.integration


def _config() -> RunConfig:
    return RunConfig().replace(
        {
            "num-rounds": 1,
            "simulation.num-clients": 5,
            "sampling.clients-per-round": 5,
            "sampling.min-clients": 2,
            "dp.enabled": False,
            "train.local-epochs": 1,
            "secagg.clip-range": 2.0,
            "seed": 11,
        }
    )


def _tampering_app(config: RunConfig, tamper: Callable[[Message, Message], None]) -> ClientApp:
    """fedsys' handlers; ``tamper(request, reply)`` rewrites each stage-3 reply in place."""
    own = local_settings(config)
    app = ClientApp()

    def wrap(action, handler):  # noqa: ANN001, ANN202
        def run(message: Message, context: Context) -> Message:
            reply = handler(message, context, own)
            if action == "secagg_mask":
                tamper(message, reply)
            return reply

        return run

    for action, handler in secure.HANDLERS.items():
        app.train(action)(wrap(action, handler))
    return app


def _secagg_id(message: Message) -> int:
    return int(message.content.config_records[SECAGG]["recipient"])


def _accuse(request: Message, reply: Message) -> None:
    """Clients with SecAgg ids 1 and 2 claim that every peer's envelope failed to open."""
    if _secagg_id(request) in (1, 2):
        peers = list(request.content.config_records[SECAGG]["senders"])
        reply.content.config_records[SECAGG]["failed-peers"] = peers


def _out_of_ring(request: Message, reply: Message) -> None:
    if _secagg_id(request) == 3:
        vector = reply.content.array_records[MASKED]["masked-input"].numpy().copy()
        vector[0] = np.uint64(2**63)
        reply.content.array_records[MASKED] = to_record({"masked-input": vector})


def _weights(run):  # noqa: ANN001, ANN202
    return {k: v.numpy() for k, v in torch.load(run / "model.pt", weights_only=True).items()}


def test_false_accusations_through_flower_exclude_nobody(tmp_path) -> None:  # noqa: ANN001
    config = _config()
    run_scenario(config, tmp_path / "honest")

    run_scenario(config, tmp_path / "attacked", client_app=_tampering_app(config, _accuse))

    record = read_metrics(tmp_path / "attacked")[0]
    assert record["status"] == "ok" and record["clients-succeeded"] == 5
    honest, attacked = _weights(tmp_path / "honest"), _weights(tmp_path / "attacked")
    assert all(np.allclose(honest[k], attacked[k], atol=1e-6) for k in honest)  # the same full sum


def test_a_malformed_masked_input_through_flower_drops_only_its_sender(tmp_path) -> None:  # noqa: ANN001
    config = _config()

    run_scenario(config, tmp_path / "run", client_app=_tampering_app(config, _out_of_ring))

    record = read_metrics(tmp_path / "run")[0]
    assert record["status"] == "ok"
    assert record["clients-succeeded"] == 4 and record["clients-failed"] == 1


# --- garbage at every stage ------------------------------------------------------------------------
# One client (the one assigned partition 2) answers stage k of round k with a malformed reply:
# every byte string in its stage record one byte short, its masked vector one value short. Round k
# of the reference
# run has the same client crash at that stage instead. Training is seeded per (seed, partition,
# round) and DP is off, so both runs must release the same aggregates: a malformed reply costs
# exactly what a dropout costs, no more (an aborted round) and no less (a wrong sum).

STAGES = {
    "semi-honest": ["secagg_setup", "secagg_share", "secagg_mask", "secagg_unmask"],
    "malicious": ["secagg_setup", "secagg_share", "secagg_mask", "secagg_consistency", "secagg_unmask"],
}
OFFENDER = 2  # the data partition the server assigns (node ids, and so SecAgg ids, vary by run)


def _offends(message: Message, context: Context) -> bool:
    """Whether this node plays the offender; set at each round's setup, which carries the config."""
    if CONFIG in message.content.config_records:
        offender = handlers.assigned_partition(message) == OFFENDER
        context.state["test-offender"] = ConfigRecord({"offender": offender})
    return bool(context.state["test-offender"]["offender"])


def _shortened(value: object) -> object:
    if isinstance(value, bytes):
        return value[:-1]
    if isinstance(value, list) and value and all(isinstance(v, bytes) for v in value):
        return [v[:-1] for v in value]
    return value


def _malform(reply: Message) -> None:
    record = reply.content.config_records[SECAGG]
    for key in list(record):
        record[key] = _shortened(record[key])  # type: ignore[assignment]
    if MASKED in reply.content.array_records:
        vector = reply.content.array_records[MASKED]["masked-input"].numpy()
        reply.content.array_records[MASKED] = to_record({"masked-input": vector[:-1].copy()})


def _stage_offender_app(config: RunConfig, stages: list[str], *, crash: bool) -> ClientApp:
    """The offender garbles (or, with ``crash``, fails) stage ``stages[k - 1]`` of round k."""
    own = local_settings(config)
    app = ClientApp()

    def wrap(action, handler):  # noqa: ANN001, ANN202
        def run(message: Message, context: Context) -> Message:
            rnd = int(message.content.config_records[SECAGG]["round"])
            targeted = _offends(message, context) and stages[rnd - 1] == action
            if targeted and crash:
                raise RuntimeError(f"crash at {action}")
            reply = handler(message, context, own)
            if targeted:
                _malform(reply)
            return reply

        return run

    for action, handler in secure.HANDLERS.items():
        app.train(action)(wrap(action, handler))
    return app


@pytest.mark.parametrize("mode", list(STAGES))
def test_garbage_at_each_stage_drops_only_its_sender_and_the_sum_is_right(tmp_path, mode) -> None:  # noqa: ANN001
    stages = STAGES[mode]
    config = _config().replace({"num-rounds": len(stages), "secagg.mode": mode})

    run_scenario(config, tmp_path / "garbage", client_app=_stage_offender_app(config, stages, crash=False))
    run_scenario(config, tmp_path / "dropout", client_app=_stage_offender_app(config, stages, crash=True))

    garbage, dropout = read_metrics(tmp_path / "garbage"), read_metrics(tmp_path / "dropout")
    assert [r["status"] for r in garbage] == ["ok"] * len(stages)
    # Before its masked input is in, the offender is dropped; after, its input counts.
    counted = stages.index("secagg_mask") + 1
    expected = [4] * counted + [5] * (len(stages) - counted)
    assert [r["clients-succeeded"] for r in garbage] == [r["clients-succeeded"] for r in dropout]
    assert [r["clients-succeeded"] for r in garbage] == expected
    a, b = _weights(tmp_path / "garbage"), _weights(tmp_path / "dropout")
    assert all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
