"""DPSettings and LocalBudget validate at construction and echo the bad value."""

from __future__ import annotations

import math

import pytest

from fedsys.errors import ConfigError
from fedsys.privacy import DPSettings, LocalBudget


@pytest.mark.parametrize(
    ("kwargs", "echo"),
    [
        ({"noise_multiplier": 0.0, "max_grad_norm": 1.0}, "0.0"),
        ({"noise_multiplier": -1.0, "max_grad_norm": 1.0}, "-1.0"),
        ({"noise_multiplier": math.inf, "max_grad_norm": 1.0}, "inf"),
        ({"noise_multiplier": 1.0, "max_grad_norm": math.nan}, "nan"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "accountant": "gdp"}, "'gdp'"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "grad_sample_mode": "ew"}, "'ew'"),
    ],
)
def test_dp_settings_reject_bad_values_and_echo_them(kwargs: dict[str, object], echo: str) -> None:
    with pytest.raises(ConfigError, match=echo):
        DPSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "echo"),
    [
        ({"max_epsilon": 0.0, "target_delta": 1e-5}, "0.0"),
        ({"max_epsilon": 1.0, "target_delta": 0.0}, "0.0"),
        ({"max_epsilon": 1.0, "target_delta": 1.0}, "1.0"),
        ({"max_epsilon": 1.0, "target_delta": 1e-5, "policy": "warn"}, "'warn'"),
        ({"max_epsilon": 1.0, "target_delta": 1e-5, "accountant": "gdp"}, "'gdp'"),
        ({"max_epsilon": True, "target_delta": 1e-5}, "True"),
    ],
)
def test_local_budget_rejects_bad_values_and_echoes_them(kwargs: dict[str, object], echo: str) -> None:
    with pytest.raises(ConfigError, match=echo):
        LocalBudget(**kwargs)  # type: ignore[arg-type]


def test_settings_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        DPSettings(1.0, 1.0)  # type: ignore[call-arg]
    budget = LocalBudget(max_epsilon=3.0, target_delta=1e-5)
    with pytest.raises(AttributeError):
        budget.max_epsilon = 100.0  # type: ignore[misc]
    assert (budget.policy, budget.accountant) == ("refuse", "rdp")
