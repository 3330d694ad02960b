"""Builders for SecAgg+ coordinator tests: honest scripted nodes whose replies a test may tamper with."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from coordinator_builders import WEIGHTS, Script, ScriptedGrid
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedsys.config import RunConfig
from fedsys.coordinator.round import RoundOutcome
from fedsys.coordinator.secure import secure_round
from fedsys.secagg import (
    MaskedInputRequest,
    SecAggClient,
    SetupRequest,
    ShareKeysRequest,
    UnmaskRequest,
)
from fedsys.wire import MASKED, METRICS, SECAGG, to_record

Tamper = Callable[[str, Message], Message]


class SecAggNode:
    """An honest SecAgg+ node (every weight moved by ``value``, weight 10) answering the four stage
    messages as ``fedsys.node.secure`` does; ``tamper(stage, reply)`` may rewrite any of its replies."""

    def __init__(self, value: float, tamper: Tamper | None = None) -> None:
        self.value, self.tamper = value, tamper
        self.client: SecAggClient | None = None

    def __call__(self, message: Message) -> Message:
        stage = message.metadata.message_type.removeprefix("train.secagg_")
        request = dict(message.content.config_records[SECAGG])
        extra: dict[str, object] = {}
        if stage == "setup":
            setup = SetupRequest.from_record(request)
            self.client = SecAggClient(setup.recipient)
            answer: Any = self.client.advertise_keys(setup)
        elif stage == "share":
            answer = self._client.share_keys(ShareKeysRequest.from_record(request))
        elif stage == "mask":
            size = sum(v.size for v in WEIGHTS.values())
            answer = self._client.mask_input(
                MaskedInputRequest.from_record(request),
                update=np.full(size, self.value),
                weight=10.0,
                rng=np.random.default_rng(0),
            )
            extra = {MASKED: to_record({"masked-input": answer.masked_input}), METRICS: MetricRecord({})}
        else:
            answer = self._client.unmask(UnmaskRequest.from_record(request))
        scalars = {k: v for k, v in answer.to_record().items() if not isinstance(v, np.ndarray)}
        reply = Message(RecordDict({SECAGG: ConfigRecord(scalars), **extra}), reply_to=message)  # type: ignore[arg-type]
        return reply if self.tamper is None else self.tamper(stage, reply)

    @property
    def _client(self) -> SecAggClient:
        assert self.client is not None
        return self.client


def run_secure(script: Mapping[int, Script], **overrides: object) -> RoundOutcome:
    """One SecAgg+ round over ``script``'s nodes (min-clients 2, DP off, unless overridden)."""
    config = RunConfig().replace({"sampling.min-clients": 2, "dp.enabled": False, **overrides})
    assignment = {node: str(node) for node in script}
    grid = ScriptedGrid(script)
    return secure_round(grid, config, assignment, WEIGHTS, 1, "00ab", simulated=False)  # type: ignore[arg-type]
