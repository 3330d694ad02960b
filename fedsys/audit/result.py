"""What an audit found: the accountant's epsilon beside the attack's lower bound, and audit.json."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedsys.audit.statistic import best_lower_bound
from fedsys.errors import ConfigError

AUDIT_FILE = "audit.json"


class Canaries(Protocol):
    """Any canary set: record canaries or gradient canaries, with their secret inclusion bits."""

    @property
    def included(self) -> np.ndarray: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class AuditResult:
    """One audit.

    Attributes:
        epsilon: What the accountant claims for the run (the largest over holders); ``inf``
            without DP.
        epsilon_lower_bound: The attack's lower bound at ``delta`` and ``confidence``.
        canaries: m.
        confidence: 1 - beta, over all attacks and guess counts tried (union bound).
        delta: The delta both numbers are stated at.
        guesses: r, of the best attack and guess count.
        correct: v, likewise.
        attack: Name of the best attack.
        attacks: Every attack tried.
        setting: ``central`` or ``federated``.
        dp: Whether DP-SGD was on.
        seed: The auditor's seed (None: OS entropy).
        seconds: Wall time.
        level: ``sample`` (canary records) or ``client`` (canary clients).
        epsilon_estimate: The client-level audit's Gaussian-fit estimate (Andrew et al., ICLR
            2024): an estimate, not a bound; None where not computed.
    """

    epsilon: float
    epsilon_lower_bound: float
    canaries: int
    confidence: float
    delta: float
    guesses: int
    correct: int
    attack: str
    attacks: tuple[str, ...]
    setting: str
    dp: bool
    seed: int | None
    seconds: float
    level: str = "sample"
    epsilon_estimate: float | None = None

    def with_estimate(self, estimate: float, *, level: str) -> AuditResult:
        """This result with a Gaussian-fit estimate and the audit's level."""
        return replace(self, epsilon_estimate=estimate, level=level)

    @property
    def violated(self) -> bool:
        """True when the lower bound exceeds the claimed epsilon: a privacy bug (at ``confidence``)."""
        return self.epsilon_lower_bound > self.epsilon

    def to_json(self) -> dict[str, Any]:
        """The audit.json document (kebab-case keys; ``epsilon`` is null without DP)."""
        doc = {k.replace("_", "-"): v for k, v in asdict(self).items()}
        doc["attacks"] = list(self.attacks)
        if not math.isfinite(self.epsilon):
            doc["epsilon"] = None
        if self.epsilon_estimate is not None and not math.isfinite(self.epsilon_estimate):
            doc["epsilon-estimate"] = None
        return doc

    def write(self, out_dir: Path) -> Path:
        """Write ``out_dir/audit.json``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / AUDIT_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def judge(
    scores: Mapping[str, np.ndarray],
    canaries: Canaries,
    *,
    epsilon: float,
    delta: float,
    confidence: float,
    setting: str,
    dp: bool,
    seed: int | None,
    seconds: float,
) -> AuditResult:
    """Turn every attack's scores into the best lower bound (union bound over attacks and guesses).

    Raises:
        ConfigError: no attack, or ``confidence`` outside (0, 1).
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"--confidence must be in (0, 1), got {confidence!r}")
    names: Sequence[str] = list(scores)
    index, best = best_lower_bound(
        [scores[n] for n in names], canaries.included, delta=delta, confidence=confidence
    )
    return AuditResult(
        epsilon=epsilon,
        epsilon_lower_bound=best.epsilon_lower_bound,
        canaries=len(canaries),
        confidence=confidence,
        delta=delta,
        guesses=best.guesses,
        correct=best.correct,
        attack=names[index],
        attacks=tuple(names),
        setting=setting,
        dp=dp,
        seed=seed,
        seconds=seconds,
    )
