"""The Python entry for notebooks: :func:`simulate` a scenario and get its results as a :class:`Run`.

It runs the same checks and the same engine (Flower's simulation on Ray, ``simulations.harness``)
as ``fedsys simulate``; the run directory is written exactly as the command writes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsys.config import RunConfig
from fedsys.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

ScenarioSource = RunConfig | Mapping[str, Any] | str | Path | None


@dataclass(frozen=True, eq=False)
class Run:
    """A finished run, read from its run directory.

    Attributes:
        run_dir: the run directory (config.toml, metrics.jsonl, model.pt, summary.json, ledgers/).
        summary: summary.json (``final-accuracy``, ``epsilon-max``, ``stop-reason``, ...).
        metrics: one row per round (metrics.jsonl), columns as its keys (``accuracy``, ``loss``, ...).
    """

    run_dir: Path
    summary: dict[str, Any] = field(repr=False)
    metrics: pd.DataFrame = field(repr=False)

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        """Read a run directory written by :func:`simulate`, ``fedsys simulate`` or a deployed server.

        Raises:
            ConfigError: ``run_dir`` holds no summary.json (the run did not finish).
        """
        import json

        import pandas as pd

        from fedsys import results

        path = Path(run_dir)
        try:
            summary = json.loads((path / results.SUMMARY_FILE).read_text())
        except FileNotFoundError as err:
            raise ConfigError(f"{path} holds no {results.SUMMARY_FILE}: not a finished run") from err
        return cls(run_dir=path, summary=summary, metrics=pd.DataFrame(results.read_metrics(path)))

    @property
    def epsilon_by_client(self) -> dict[str, float]:
        """Each client's latest cumulative epsilon, as the server last learned it."""
        return {str(k): float(v) for k, v in self.summary.get("epsilon-by-client", {}).items()}

    @cached_property
    def config(self) -> RunConfig:
        """The resolved scenario the run used (config.toml)."""
        from fedsys import results

        return RunConfig.from_toml(self.run_dir / results.CONFIG_FILE)

    @cached_property
    def model(self) -> nn.Module:
        """The final global model (model.pt) in eval mode, built as the run built it."""
        import torch

        from fedsys import results
        from fedsys.models import build_model, load_weights

        shape, classes = model_signature(self.config)
        model = build_model(self.config.model, shape, classes, fix=self.config.fix_model)
        state = torch.load(self.run_dir / results.MODEL_FILE, weights_only=True)
        arrays = {k: v.numpy() for k, v in state.items()}
        load_weights(model, arrays, source=str(self.run_dir / results.MODEL_FILE))
        return model.eval()


def simulate(
    config_or_path: ScenarioSource = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    model: str | Callable[..., Any] | None = None,
    data: str | Path | Callable[..., Any] | None = None,
) -> Run:
    """Simulate a scenario with Flower's simulation engine and return the finished run.

    Args:
        config_or_path: a scenario TOML path, a :class:`RunConfig`, a (nested or dotted) mapping
            of config keys, or None for the defaults (digits, DP-SGD, SecAgg+).
        overrides: dotted config keys applied last, e.g. ``{"num-rounds": 3, "dp.enabled": False}``.
        out: the run directory (default: ``runs/<scenario>-<time>``, as ``fedsys simulate``).
        model: a built-in name, ``"package.module:factory"``, or a factory function defined in
            an importable module (Ray workers import it by name, so not one defined in the
            notebook itself).
        data: the scenario's ``dataset``: a built-in name, a file, ``"package.module:loader"``,
            or a loader function defined in an importable module, called with no arguments and
            returning ``(features, labels)`` or a ``torch.utils.data.Dataset`` of the whole data
            set, which fedsys splits and partitions (:mod:`fedsys.data.custom`).

    Returns:
        The run, read back from its directory.

    Raises:
        FedsysError: the scenario, its data, model or tracking settings are invalid (before Ray
            starts), or the run failed.
    """
    from fedsys.data.custom import loader_reference
    from fedsys.data.federated import check_scenario_data
    from fedsys.models import model_reference
    from simulations.harness import run_scenario

    config = _load(config_or_path).replace(dict(overrides or {}))
    if model is not None:
        config = config.replace({"model": model_reference(model)})
    if data is not None:
        config = config.replace({"dataset": loader_reference(data)})
    check_scenario_data(config)
    check_model_and_tracking(config)
    stem = Path(config_or_path).stem if isinstance(config_or_path, str | Path) else "api"
    run_dir = Path(out) if out is not None else Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = run_scenario(config, run_dir)
    return Run.load(summary.get("run-dir", run_dir))


def check_model_and_tracking(config: RunConfig) -> None:
    """Before Ray starts: build the scenario's model as the server will (``fix-model`` applied,
    DP-compatibility checked when DP is on) and check that ``tensorboard-dir`` and ``mlflow-uri``
    can be used.

    Raises:
        ConfigError: the model does not resolve or build, is not DP-compatible, or fails on
            the data set's examples; or tensorboard or mlflow is missing.
    """
    from fedsys.models import build_checked_model
    from fedsys.tracking import check_tracking

    check_tracking(config)
    shape, classes = model_signature(config)
    model = build_checked_model(config.model, shape, classes, fix=config.fix_model, dp=config.dp.enabled)
    if config.dataset != "node":
        from fedsys.data.federated import check_model_on_data

        check_model_on_data(model, config)


def model_signature(config: RunConfig) -> tuple[tuple[int, ...], int]:
    """``(feature_shape, num_classes)`` the scenario's model is built for.

    Raises:
        ConfigError: ``dataset = "node"`` without a valid ``feature-shape`` and ``num-classes``.
    """
    if config.dataset != "node":
        from fedsys.data.federated import data_signature

        return data_signature(config)
    from fedsys.models.factory import declared_signature

    return declared_signature(config.feature_shape, config.num_classes)


def _load(source: ScenarioSource) -> RunConfig:
    if source is None:
        return RunConfig()
    if isinstance(source, RunConfig):
        return source
    if isinstance(source, str | Path):
        return RunConfig.from_toml(Path(source))
    return RunConfig.from_mapping(source)
