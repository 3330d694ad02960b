"""Malicious clients against SecAgg+ through the real Flower simulation engine.

False accusations (a client's claim that it could not open honest peers' envelopes) must not exclude
anyone, and a client whose masked input is malformed is dropped while the round completes.
"""

from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedsys.config import RunConfig
from fedsys.node import secure
from fedsys.results import read_metrics
from fedsys.wire import MASKED, SECAGG, to_record
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
