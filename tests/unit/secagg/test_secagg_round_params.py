"""The round code's SecAgg+ parameters: the scenario's min-clients becomes the server's min-survivors."""

from __future__ import annotations

import pytest

from fedsys.config import RunConfig
from fedsys.coordinator.secure import secagg_params


@pytest.mark.parametrize(("min_clients", "min_survivors"), [(1, 2), (2, 2), (3, 3), (7, 7)])
def test_min_survivors_is_min_clients_but_never_below_two(min_clients: int, min_survivors: int) -> None:
    config = RunConfig().replace({"sampling.min-clients": min_clients})

    params = secagg_params(config)

    assert params.min_survivors == min_survivors


def test_zero_degree_and_threshold_mean_the_library_defaults_and_others_pass_through() -> None:
    defaults = secagg_params(RunConfig())
    chosen = secagg_params(
        RunConfig().replace({"secagg.degree": 6, "secagg.threshold": 5, "secagg.clip-range": 3.0})
    )

    assert (defaults.degree, defaults.threshold) == (None, None)
    assert (chosen.degree, chosen.threshold, chosen.clip_range) == (6, 5, 3.0)
    assert (chosen.max_weight, chosen.quant_bits) == (
        RunConfig().secagg.max_weight,
        RunConfig().secagg.quant_bits,
    )
