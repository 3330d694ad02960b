"""Builders for tests that play a server against a real data holder's ClientApp handlers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedsys.config import RunConfig
from fedsys.models import build_model, to_arrays
from fedsys.privacy import PrivacyLedger
from fedsys.secagg import RoundContext, SetupRequest
from fedsys.wire import ARRAYS, CONFIG, STATUS, to_record

N_FEATURES = 6
ROUND = RoundContext(run_id=0xFF, round=1)


def write_holder(tmp_path: Path, *, rows: int = 120, **node: object) -> dict[str, object]:
    """A deployment-style holder: a CSV of ``rows`` records in [0, 1], a ledger made as by
    ``fedsys ledger init``, and the node config naming them (plus ``node``)."""
    rng = np.random.default_rng(0)
    lines = [",".join(f"{v:.3f}" for v in rng.uniform(0, 1, N_FEATURES)) + f",{i % 2}" for i in range(rows)]
    data = tmp_path / "hospital.csv"
    data.write_text(",".join(f"f{i}" for i in range(N_FEATURES)) + ",label\n" + "\n".join(lines) + "\n")
    PrivacyLedger(tmp_path / "ledger.sqlite", create=True).close()
    return {
        "data-path": str(data),
        "max-epsilon": 50.0,
        "ledger-path": str(tmp_path / "ledger.sqlite"),
        "feature-range": "0,1",
        **node,
    }


def node_context(node_config: dict[str, object]) -> Context:
    """The context a SuperNode gives the ClientApp for one run."""
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})


def forbid_data_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any read of the holder's data fail the test."""

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the holder read its data for a request its policy refuses")

    monkeypatch.setattr("fedsys.node.update.local_data", forbidden)


def server_request(
    config: RunConfig,
    *,
    rnd: int = 1,
    extra: dict[str, Any] | None = None,
    message_type: str = "train",
) -> tuple[Message, dict[str, np.ndarray]]:
    """The server's message: its run config, the global weights and any ``extra`` records."""
    flat = {**config.to_flat(), "server-round": rnd, "run-id": "00ff"}
    weights = to_arrays(build_model(config.model, (N_FEATURES,), 2))
    content = RecordDict({CONFIG: ConfigRecord(flat), ARRAYS: to_record(weights)})
    for key, record in (extra or {}).items():
        content[key] = record
    return Message(content, message_type=message_type, dst_node_id=5), weights


def setup_request(
    threshold: int, neighbours: tuple[int, ...] = (2, 3), *, recipient: int = 1, max_weight: float = 1000.0
) -> SetupRequest:
    """A SecAgg+ setup for the logreg model over ``N_FEATURES`` features and 2 classes."""
    return SetupRequest(
        context=ROUND,
        recipient=recipient,
        neighbours=neighbours,
        threshold=threshold,
        ring_bits=40,
        quant_bits=16,
        clip_range=8.0,
        vector_length=N_FEATURES * 2 + 2,
        max_weight=max_weight,
    )


def ddp_setup_request(
    *, gamma: float = 50.0, ring_bits: int = 20, integer: bool = True, threshold: int = 2
) -> SetupRequest:
    """A distributed-DP setup (integer inputs at scale ``gamma``) for the same model, padded to 16."""
    from dataclasses import replace

    from fedsys.secagg.ddp_bounds import padded_dim_for

    return replace(
        setup_request(threshold),
        ring_bits=ring_bits,
        vector_length=padded_dim_for(N_FEATURES * 2 + 2),
        integer_input=integer,
        integer_scale=gamma,
    )


def status_of(reply: Message) -> tuple[str, str]:
    """A reply's status and reason."""
    record = reply.content.config_records[STATUS]
    return str(record["status"]), str(record["reason"])


def gaussian_epsilon(noise_multiplier: float, delta: float, *, releases: int = 1) -> float:
    """``releases`` Gaussian releases (q = 1) by dp_accounting's RDP accountant on Opacus' orders:
    an accountant independent of fedsys'."""
    import dp_accounting
    from dp_accounting import rdp
    from opacus.accountants.rdp import RDPAccountant

    accountant = rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier), releases)
    return float(accountant.get_epsilon(delta))
