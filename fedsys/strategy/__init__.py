"""Server-side aggregation strategies, one per file."""

from fedsys.strategy.fedavg import apply_delta, check_step, weighted_mean
from fedsys.strategy.server_optimizer import (
    ServerOptimizerState,
    apply_server_optimizer,
    resume_optimizer_state,
)

__all__ = [
    "ServerOptimizerState",
    "apply_delta",
    "apply_server_optimizer",
    "check_step",
    "resume_optimizer_state",
    "weighted_mean",
]
