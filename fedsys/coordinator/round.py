"""The outcome of one training round, whatever aggregation produced it."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsys.evaluation import EvaluationSums
from fedsys.node.policy import Refusal
from fedsys.wire import STATUS_BUDGET

UNKNOWN_REFUSAL = "declined"  # a refusal whose reason names no code fedsys knows


def refusal_code(status: str, reason: str) -> str:
    """The code a holder's refusal names, and nothing else of its free text.

    A budget refusal (``budget-exhausted``) is ``budget``; any other refusal is the code its
    reason starts with (``policy-...: ...``, as :func:`fedsys.node.handlers.decline` writes it)
    when it is one of :class:`~fedsys.node.policy.Refusal`, else ``declined``. The holder's
    text stays in the per-node log line: only it may carry numbers, and only when the holder's
    policy shares them (``share-epsilon``).
    """
    if status == STATUS_BUDGET:
        return Refusal.BUDGET.value
    code = reason.partition(":")[0].strip()
    return code if code in {r.value for r in Refusal} else UNKNOWN_REFUSAL


def describe_refusals(codes: Iterable[str]) -> str:
    """``budget``, or ``2 budget, 1 policy-cohort-too-small``: each code, counted when they differ."""
    counts = Counter(codes)
    if len(counts) == 1:
        return next(iter(counts))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{count} {code}" for code, count in ranked)


@dataclass
class RoundOutcome:
    """Who took part and what came out."""

    sampled: list[int]
    succeeded: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    declined: list[int] = field(default_factory=list)
    refusals: dict[int, str] = field(default_factory=dict)  # declined node id -> its refusal code
    delta: dict[str, np.ndarray] | None = None
    epsilons: dict[int, float] = field(default_factory=dict)  # node id -> its cumulative epsilon
    train_losses: list[float] = field(default_factory=list)
    status: str = "ok"
    message: str = ""
    train_seconds: float = 0.0
    aggregate_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    evaluation: EvaluationSums | None = None  # the cohort's federated-evaluation sums (model sent)

    def declined_summary(self) -> str:
        """``3 of 3 sampled clients declined: budget``, or empty when none declined."""
        if not self.declined:
            return ""
        codes = describe_refusals(self.refusals.get(node, UNKNOWN_REFUSAL) for node in self.declined)
        return f"{len(self.declined)} of {len(self.sampled)} sampled clients declined: {codes}"

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
        if self.evaluation is not None and self.evaluation.examples > 0:
            out.update(self.evaluation.summary())
        out.update(self.extra)
        return out
