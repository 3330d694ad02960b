"""SecAgg+ against a malicious server, through the real Flower simulation engine.

The simulated PKI (one Ed25519 identity per virtual client, derived from a per-run seed the harness
draws) lets every client check its peers' signed keys and the survivors' signatures on U3. The server
side of the attacks is the real coordinator with one SecAggServer method replaced (the ServerApp runs
in this process); the network side rewrites requests inside the ClientApp, before fedsys' handler sees
them. Each virtual client writes what it served or refused to an events file, because it runs in a Ray
worker process.
"""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedsys.config import RunConfig
from fedsys.errors import ProtocolError
from fedsys.node import secure
from fedsys.results import read_metrics
from fedsys.secagg import SecAggServer, UnmaskRequest
from fedsys.secagg.messages import Stage
from fedsys.secagg.primitives import generate_key_pair
from fedsys.wire import SECAGG
from simulations.harness import local_settings, run_scenario

pytestmark = pytest.mark.integration

Tamper = Callable[[str, Message], None]


def _config(mode: str = "malicious", clients: int = 5) -> RunConfig:
    return RunConfig().replace(
        {
            "num-rounds": 1,
            "simulation.num-clients": clients,
            "sampling.clients-per-round": clients,
            "sampling.min-clients": 2,
            "dp.enabled": False,
            "train.lr": 0.3,
            "train.momentum": 0.0,
            "train.local-epochs": 1,
            "secagg.clip-range": 2.0,
            "secagg.mode": mode,
            "seed": 11,
            # the protocol under attack, one round of it: no final scoring-only SecAgg+ round
            "evaluation.federated": False,
        }
    )


def _recording_app(config: RunConfig, events: Path, tamper: Tamper | None = None) -> ClientApp:
    """fedsys' handlers; ``tamper(action, request)`` rewrites requests in flight; outcomes to ``events``."""
    own = local_settings(config)
    app = ClientApp()

    def wrap(action, handler):  # noqa: ANN001, ANN202
        def run(message: Message, context: Context) -> Message:
            if tamper is not None:
                tamper(action, message)
            recipient = int(message.content.config_records[SECAGG]["recipient"])
            try:
                reply = handler(message, context, own)
            except Exception as err:
                _log(events, action, recipient, "refused", str(err))
                raise
            _log(events, action, recipient, "served", "")
            return reply

        return run

    for action, handler in secure.HANDLERS.items():
        app.train(action)(wrap(action, handler))
    return app


def _log(events: Path, action: str, client: int, outcome: str, detail: str) -> None:
    with events.open("a") as fh:
        fh.write(
            json.dumps({"action": action, "client": client, "outcome": outcome, "detail": detail}) + "\n"
        )


def _events(events: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []


def _served(events: Path, action: str) -> list[object]:
    return sorted(e["client"] for e in _events(events) if e["action"] == action and e["outcome"] == "served")


def _weights(run: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in torch.load(run / "model.pt", weights_only=True).items()}


def test_a_malicious_mode_round_equals_plaintext_fedavg_within_the_quantisation_bound(tmp_path):
    events = tmp_path / "events.jsonl"
    config = _config()
    run_scenario(config.replace({"secagg.enabled": False}), tmp_path / "plain")

    run_scenario(config, tmp_path / "secure", client_app=_recording_app(config, events))

    record = read_metrics(tmp_path / "secure")[0]
    plain, secure_w = _weights(tmp_path / "plain"), _weights(tmp_path / "secure")
    worst = max(float(np.max(np.abs(plain[k] - secure_w[k]))) for k in plain)
    assert record["status"] == "ok" and record["clients-succeeded"] == 5
    assert 0 < worst <= record["secagg-error-bound"] + 1e-6  # float32 storage of the weights
    assert _served(events, "secagg_consistency") == [1, 2, 3, 4, 5]  # every survivor signed U3
    assert _served(events, "secagg_unmask") == [1, 2, 3, 4, 5]


def _inject_a_key(action: str, message: Message) -> None:
    """The server substitutes its own encryption key for each client's lowest peer (keeping that
    peer's signature), to read the shares meant for that peer."""
    if action == "secagg_share":
        record = message.content.config_records[SECAGG]
        keys = list(record["encryption-keys"])
        keys[0] = generate_key_pair().public
        record["encryption-keys"] = keys


def test_a_server_injecting_a_key_is_caught_before_any_share_leaves_a_client(tmp_path):
    events = tmp_path / "events.jsonl"
    config = _config()

    run_scenario(config, tmp_path / "run", client_app=_recording_app(config, events, _inject_a_key))

    record = read_metrics(tmp_path / "run")[0]
    refusals = [e for e in _events(events) if e["action"] == "secagg_share"]
    assert record["status"] == "abandoned"
    assert len(refusals) == 5 and all(e["outcome"] == "refused" for e in refusals)
    assert all("not signed by its identity" in str(e["detail"]) for e in refusals)
    assert _served(events, "secagg_mask") == [] and _served(events, "secagg_unmask") == []


def test_a_server_showing_clients_different_survivor_sets_gets_no_share(tmp_path, monkeypatch):
    """Clients 1 and 2 are told client 5 dropped, clients 3-5 that everyone survived; the server then
    asks 1 and 2 for client 5's s-key shares and 3-5 for its b-shares, which would unmask client 5's
    input. With t = 4 of 5 neither view gathers t signatures, so no client reveals anything."""
    events = tmp_path / "events.jsonl"
    honest_check = SecAggServer.receive_masked_inputs_for_check
    got: dict[str, object] = {}

    def split_view(self, replies):  # noqa: ANN001, ANN202
        requests = honest_check(self, replies)
        smaller = tuple(u for u in requests[1].survivors if u != 5)
        for u in (1, 2):
            requests[u] = type(requests[u])(self.context, u, smaller)
        got["views"] = {u: r.survivors for u, r in requests.items()}
        return requests

    def forge_unmask(self, replies):  # noqa: ANN001, ANN202
        signatures = {u: r.signature for u, r in replies.items()}
        views = got["views"]
        self._requests = {
            u: UnmaskRequest(self.context, u, views[u], () if 5 in views[u] else (5,), signatures)
            for u in views
        }
        self._next = Stage.UNMASK
        return dict(self._requests)

    def record_unmask(self, replies):  # noqa: ANN001, ANN202
        got["unmask-replies"] = dict(replies)
        raise ProtocolError("attack over")

    monkeypatch.setattr(SecAggServer, "receive_masked_inputs_for_check", split_view)
    monkeypatch.setattr(SecAggServer, "receive_consistency", forge_unmask)
    monkeypatch.setattr(SecAggServer, "receive_unmask", record_unmask)
    config = _config()

    run_scenario(config, tmp_path / "run", client_app=_recording_app(config, events))

    unmask = [e for e in _events(events) if e["action"] == "secagg_unmask"]
    assert _served(events, "secagg_consistency") == [1, 2, 3, 4, 5]  # each signed the set it was shown
    assert got["unmask-replies"] == {}
    assert len(unmask) == 5 and all(e["outcome"] == "refused" for e in unmask)
    assert all("refusing to unmask" in str(e["detail"]) for e in unmask)
    assert read_metrics(tmp_path / "run")[0]["status"] == "abandoned"
