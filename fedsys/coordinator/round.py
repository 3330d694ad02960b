"""The outcome of one training round, whatever aggregation produced it."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RoundOutcome:
    """Who took part and what came out."""

    sampled: list[int]
    succeeded: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    declined: list[int] = field(default_factory=list)
    delta: dict[str, np.ndarray] | None = None
    epsilons: dict[int, float] = field(default_factory=dict)  # node id -> its cumulative epsilon
    train_losses: list[float] = field(default_factory=list)
    status: str = "ok"
    message: str = ""
    train_seconds: float = 0.0
    aggregate_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self, rnd: int, sampled: list[int]) -> dict[str, Any]:
        """Metrics of the round as a flat mapping (one line of metrics.jsonl)."""
        out: dict[str, Any] = {
            "round": rnd,
            "status": self.status,
            "clients-sampled": len(sampled),
            "clients-succeeded": len(self.succeeded),
            "clients-failed": len(self.failed),
            "clients-declined": len(self.declined),
            "train-seconds": self.train_seconds,
            "aggregate-seconds": self.aggregate_seconds,
        }
        if self.train_losses:
            out["train-loss"] = math.fsum(self.train_losses) / len(self.train_losses)
        if self.epsilons:
            spent = list(self.epsilons.values())
            out.update(
                {
                    "epsilon-min": min(spent),
                    "epsilon-median": statistics.median(spent),
                    "epsilon-max": max(spent),
                }
            )
        if self.message:
            out["message"] = self.message
        out.update(self.extra)
        return out
