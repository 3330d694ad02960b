"""Server-side aggregation strategies, one per file."""

from fedsys.strategy.fedavg import apply_delta, weighted_mean

__all__ = ["apply_delta", "weighted_mean"]
