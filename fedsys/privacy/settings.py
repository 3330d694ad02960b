"""Validated, immutable DP-SGD settings and the data holder's own privacy budget."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fedsys.errors import ConfigError

Accountant = Literal["rdp", "prv"]
GradSampleMode = Literal["auto", "hooks", "ghost"]
BudgetPolicy = Literal["refuse", "truncate"]

ACCOUNTANTS: tuple[Accountant, ...] = ("rdp", "prv")
GRAD_SAMPLE_MODES: tuple[GradSampleMode, ...] = ("auto", "hooks", "ghost")
BUDGET_POLICIES: tuple[BudgetPolicy, ...] = ("refuse", "truncate")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _require_positive(name: str, value: float) -> None:
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def _require_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class DPSettings:
    """Sample-level DP-SGD parameters for one round (Abadi et al., CCS 2016, Alg. 1).

    These may be requested by the server; they never widen the client's budget, which
    comes only from :class:`LocalBudget`.

    Attributes:
        noise_multiplier: Gaussian noise standard deviation divided by ``max_grad_norm``.
            Must be > 0: without noise there is no finite epsilon.
        max_grad_norm: L2 bound each per-sample gradient is clipped to.
        accountant: Accountant the Opacus engine reports with (``rdp`` or ``prv``).
        grad_sample_mode: How per-sample gradient norms are computed: ``hooks``
            (materialised per-sample gradients), ``ghost`` (ghost clipping) or ``auto``.
    """

    noise_multiplier: float
    max_grad_norm: float
    accountant: Accountant = "rdp"
    grad_sample_mode: GradSampleMode = "auto"

    def __post_init__(self) -> None:
        _require_positive("dp.noise-multiplier", self.noise_multiplier)
        _require_positive("dp.max-grad-norm", self.max_grad_norm)
        _require_choice("dp.accountant", self.accountant, ACCOUNTANTS)
        _require_choice("dp.grad-sample-mode", self.grad_sample_mode, GRAD_SAMPLE_MODES)


@dataclass(frozen=True, kw_only=True)
class LocalBudget:
    """The data holder's own (epsilon, delta) budget for one data set, over all runs.

    Attributes:
        max_epsilon: Largest cumulative epsilon the data holder accepts.
        target_delta: The delta at which epsilon is evaluated, in (0, 1).
        policy: ``refuse`` raises when the planned round does not fit; ``truncate`` runs
            only the steps that still fit (and raises when none do).
        accountant: The accountant the data holder trusts for its budget. The whole
            history is always re-evaluated with it, whatever the server asked for;
            ``rdp`` (the default) is the more conservative of the two.
    """

    max_epsilon: float
    target_delta: float
    policy: BudgetPolicy = "refuse"
    accountant: Accountant = "rdp"

    def __post_init__(self) -> None:
        _require_positive("budget.max-epsilon", self.max_epsilon)
        delta = self.target_delta
        if not (_is_number(delta) and 0 < delta < 1):
            raise ConfigError(f"budget.target-delta must be in (0, 1), got {delta!r}")
        _require_choice("budget.policy", self.policy, BUDGET_POLICIES)
        _require_choice("budget.accountant", self.accountant, ACCOUNTANTS)
