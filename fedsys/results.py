"""A run directory: resolved config, per-round metrics, final model and summary."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch

from fedsys.config import RunConfig

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
MODEL_FILE = "model.pt"
SUMMARY_FILE = "summary.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _json_line(record: Mapping[str, Any]) -> str:
    return json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n"


def write_config(run_dir: Path, config: RunConfig) -> None:
    """Write the fully resolved scenario as TOML."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(tomli_w.dumps(config.to_mapping()))


def append_metrics(run_dir: Path, record: Mapping[str, Any]) -> None:
    """Append one round's metrics as a JSON line."""
    with (run_dir / METRICS_FILE).open("a") as fh:
        fh.write(_json_line(record))


def rewrite_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Replace metrics.jsonl with ``records`` (used on resume to drop rounds after a crash)."""
    (run_dir / METRICS_FILE).write_text("".join(_json_line(r) for r in records))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All round records of a run."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_model(run_dir: Path, weights: Mapping[str, np.ndarray]) -> None:
    """Save the final global weights as a torch state dict."""
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, run_dir / MODEL_FILE)


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> None:
    """Write summary.json."""
    (run_dir / SUMMARY_FILE).write_text(
        json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2) + "\n"
    )
