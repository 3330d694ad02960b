"""A round record as the coordinator writes it, for the TensorBoard and MLflow tracking tests."""

from __future__ import annotations

from typing import Any


def round_record(rnd: int, **extra: Any) -> dict[str, Any]:
    """Round ``rnd``'s metrics record, with ``extra`` keys added or replaced."""
    return {
        "round": rnd,
        "status": "ok",
        "accuracy": 0.5 + rnd / 10,
        "loss": 2.0 - rnd / 10,
        "macro-f1": 0.4,
        "epsilon-min": 0.1 * rnd,
        "epsilon-median": 0.2 * rnd,
        "epsilon-max": 0.3 * rnd,
        "clients-sampled": 3,
        "clients-succeeded": 2,
        "clients-failed": 1,
        "clients-declined": 0,
        "round-seconds": 1.5,
        **extra,
    }
