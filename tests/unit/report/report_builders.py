"""Small builders of fake run directories (metrics.jsonl, config.toml, summary.json, ledgers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomli_w

from fedsys.config import RunConfig
from fedsys.privacy import LocalBudget, PrivacyLedger

RUN_ID = "run-under-test"
BUDGET = LocalBudget(max_epsilon=50.0, target_delta=1e-5)


def round_record(rnd: int, **extra: Any) -> dict[str, Any]:
    """One plausible metrics.jsonl line."""
    record: dict[str, Any] = {
        "round": rnd,
        "status": "ok",
        "clients-sampled": 4,
        "clients-succeeded": 3,
        "clients-failed": 1 if rnd == 2 else 0,
        "clients-declined": 0 if rnd == 2 else 1,
        "train-seconds": 1.0,
        "aggregate-seconds": 0.01,
        "loss": 2.0 / rnd,
        "accuracy": min(0.3 + 0.1 * rnd, 0.95),
        "macro-f1": min(0.25 + 0.1 * rnd, 0.9),
        "eval-seconds": 0.05,
        "round-seconds": 1.2,
    }
    record.update(extra)
    return record


def write_run(
    path: Path,
    records: list[dict[str, Any]],
    *,
    dp: bool = True,
    summary: dict[str, Any] | None = None,
    **overrides: Any,
) -> Path:
    """A run directory as ``fedsys simulate`` leaves it (without model and checkpoint)."""
    path.mkdir(parents=True)
    config = RunConfig().replace({"dp.enabled": dp, "num-rounds": len(records), **overrides})
    (path / "config.toml").write_text(tomli_w.dumps(config.to_mapping()))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    full = {"run-id": RUN_ID, "rounds-planned": len(records), **(summary or {})}
    (path / "summary.json").write_text(json.dumps(full))
    return path


def spend(
    ledger_path: Path,
    rounds: list[int],
    *,
    run_id: str = RUN_ID,
    steps: int = 20,
    noise_multiplier: float = 1.0,
    sample_rate: float = 0.1,
) -> list[float]:
    """Record DP-SGD steps in a client's ledger for ``rounds``; returns epsilon after each."""
    ledger_path.parent.mkdir(parents=True, exist_ok=True)
    after = []
    with PrivacyLedger(ledger_path, create=True) as ledger:
        for rnd in rounds:
            reservation = ledger.reserve_within_budget(
                budget_key="default",
                fingerprint="data-of-" + ledger_path.stem,
                run_id=run_id,
                server_round=rnd,
                noise_multiplier=noise_multiplier,
                sample_rate=sample_rate,
                steps=steps,
                budget=BUDGET,
            )
            ledger.commit(reservation.entry_id, actual_steps=steps, epsilon_after=reservation.epsilon_after)
            after.append(reservation.epsilon_after)
    return after
