"""Server-side aggregation strategies, one per file."""

from fedsys.strategy.fedavg import apply_delta, check_step, weighted_mean

__all__ = ["apply_delta", "check_step", "weighted_mean"]
