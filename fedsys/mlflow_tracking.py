"""Experiment tracking in MLflow (``mlflow-uri``): the resolved config, each round's scalars, the results.

One MLflow run per fedsys run, named after the run directory, in the experiment ``fedsys``
(or ``$MLFLOW_EXPERIMENT_NAME``). It records

- params: the resolved scenario, flattened to dotted keys (``dp.noise-multiplier``), as in
  ``config.toml``;
- metrics: per round, the same scalars as TensorBoard (:data:`fedsys.tracking.SCALARS`, e.g.
  ``eval/accuracy``, ``privacy/epsilon-max``) at step = the round number;
- artifacts, when the run finishes: ``run/`` (config.toml, metrics.jsonl, summary.json),
  ``model/model.pt`` (the final global weights) and ``report/`` (what ``fedsys report`` writes).

Written by the server from the record that becomes a line of ``metrics.jsonl``, so simulation
and deployment log alike and MLflow shows nothing the run directory does not. A resumed run
continues the MLflow run named in ``RUN_DIR/mlflow.json``.

Stores: a local file store (a plain path or ``file:`` URI) works offline; MLflow 3 keeps it in
maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, which fedsys turns on while it opens the
store (unless set; MLflow's own tools reading the store need it set too). ``sqlite:///PATH`` and
tracking servers (``http(s)://``) work in simulation. Under the operator's gate (deployment) only
a file store inside the server's runs directory is accepted: a run config must not make the
operator's host write elsewhere or open connections to hosts the submitter chooses.
``mlflow`` (or the lighter ``mlflow-skinny``) is an optional extra (``fedsys[mlflow]``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from fedsys import results
from fedsys.config import RunConfig
from fedsys.errors import ConfigError, FedsysError

log = logging.getLogger("fedsys")
POINTER_FILE = "mlflow.json"  # in the run directory: which MLflow run holds it (for resume)
DEFAULT_EXPERIMENT = "fedsys"
RUN_DIR_TAG = "fedsys.run-dir"
_ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
_BATCH = 100  # MLflow's limit of params per log_batch call
_RUN_FILES = (results.CONFIG_FILE, results.METRICS_FILE, results.SUMMARY_FILE)


class MlflowTracker:
    """Logs one fedsys run to one MLflow run (see the module docstring).

    Args:
        tracking_uri: the resolved store URI (:func:`tracking_uri`).
        run_dir: the fedsys run directory (its name becomes the MLflow run name).
        params: the resolved scenario, flat (logged only when the MLflow run is created).
        resume: continue the MLflow run named in ``run_dir/mlflow.json`` if it is in this store.

    Raises:
        ConfigError: mlflow is not installed, or the store cannot be opened or written.
    """

    def __init__(
        self, tracking_uri: str, run_dir: Path, *, params: Mapping[str, Any], resume: bool = False
    ) -> None:
        self.tracking_uri = tracking_uri
        self.run_dir = run_dir
        _import_mlflow()
        with _mlflow_errors(tracking_uri):
            self._client = _client(tracking_uri)
            self.run_id = (self._resumed_run() if resume else None) or self._new_run(params)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / POINTER_FILE).write_text(
            json.dumps({"tracking-uri": tracking_uri, "run-id": self.run_id}, indent=2) + "\n"
        )

    def log_round(self, record: Mapping[str, Any]) -> None:
        """Log the record's scalars (missing or non-finite values are skipped) at step = its round."""
        from mlflow.entities import Metric

        from fedsys.tracking import round_scalars

        step, stamp = int(record["round"]), int(time.time() * 1000)
        metrics = [Metric(tag, value, stamp, step) for tag, value in round_scalars(record).items()]
        with _mlflow_errors(self.tracking_uri):
            self._client.log_batch(self.run_id, metrics=metrics)

    def close(self, *, finished: bool = True) -> None:
        """End the MLflow run: with ``finished``, log the run's files first and mark it FINISHED;
        otherwise (the run raised) mark it FAILED, logging rather than raising a tracking error
        so that the run's own error is the one reported."""
        try:
            with _mlflow_errors(self.tracking_uri):
                if finished:
                    self._log_artifacts()
                self._client.set_terminated(self.run_id, status="FINISHED" if finished else "FAILED")
        except ConfigError as err:
            if finished:
                raise
            log.warning("mlflow: could not mark run %s failed: %s", self.run_id, err)

    def _new_run(self, params: Mapping[str, Any]) -> str:
        from mlflow.entities import Param

        run = self._client.create_run(
            _experiment_id(self._client),
            run_name=self.run_dir.name,
            tags={RUN_DIR_TAG: str(self.run_dir)},
        )
        run_id: str = run.info.run_id
        items = [Param(key, str(value)) for key, value in sorted(params.items())]
        for start in range(0, len(items), _BATCH):
            self._client.log_batch(run_id, params=items[start : start + _BATCH])
        return run_id

    def _resumed_run(self) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            pointer = json.loads((self.run_dir / POINTER_FILE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(pointer, dict) or pointer.get("tracking-uri") != self.tracking_uri:
            return None
        try:
            run_id = str(pointer["run-id"])
            self._client.update_run(run_id, status="RUNNING")
        except (KeyError, MlflowException):
            return None  # deleted from the store since: start a new MLflow run
        return run_id

    def _log_artifacts(self) -> None:
        for name in _RUN_FILES:
            if (self.run_dir / name).is_file():
                self._client.log_artifact(self.run_id, str(self.run_dir / name), artifact_path="run")
        if (self.run_dir / results.MODEL_FILE).is_file():
            self._client.log_artifact(self.run_id, str(self.run_dir / results.MODEL_FILE), "model")
        with tempfile.TemporaryDirectory(prefix="fedsys-report-") as tmp:
            if _write_report(self.run_dir, Path(tmp)):
                self._client.log_artifacts(self.run_id, tmp, artifact_path="report")


def open_mlflow(config: RunConfig, run_dir: Path, *, resume: bool = False) -> MlflowTracker | None:
    """The run's MLflow tracker, or None when ``mlflow-uri`` is empty.

    Raises:
        ConfigError: as :func:`check_mlflow`, or the store cannot be opened.
    """
    if not config.mlflow_uri:
        return None
    return MlflowTracker(tracking_uri(config), run_dir, params=config.to_flat(), resume=resume)


def check_mlflow(config: RunConfig) -> None:
    """Fail before any process starts if ``mlflow-uri`` is set but mlflow is missing or the URI
    is refused (contacts no tracking server).

    Raises:
        ConfigError: mlflow is not installed, or (under the operator's gate) the URI is not a
            file store inside the server's runs directory.
    """
    if config.mlflow_uri:
        _import_mlflow()
        tracking_uri(config)


def tracking_uri(config: RunConfig) -> str:
    """``mlflow-uri`` as MLflow gets it: a file store as an absolute ``file://`` URI (relative
    paths from the working directory, or under the gate from the runs directory); others as given.

    Raises:
        ConfigError: under the operator's gate, not a file store strictly inside the runs directory.
    """
    from fedsys.deploy.runs import inside_runs
    from fedsys.deploy.server import RUNS_ROOT_ENV

    uri = config.mlflow_uri
    path = file_store_path(uri)
    runs_root = os.environ.get(RUNS_ROOT_ENV)
    if not runs_root:  # simulation or a local `flwr run`: the caller's own machine
        return uri if path is None else Path(path).expanduser().resolve().as_uri()
    if path is None:
        raise ConfigError(
            "mlflow-uri must be a file store (a path) inside the server's runs directory on a "
            f"deployed server, got {uri!r}"
        )
    return inside_runs(Path(runs_root).resolve(), "mlflow-uri", path).as_uri()


def file_store_path(uri: str) -> str | None:
    """The directory of a file-store URI (a plain path or ``file:``), None for any other scheme."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return unquote(parsed.path) if parsed.netloc in ("", "localhost") else None
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:" is a drive, not a scheme
        return None
    return uri


def _client(uri: str) -> Any:
    mlflow_tracking = _import_mlflow()
    with _file_store_allowed(uri):
        return mlflow_tracking.MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any) -> str:
    from mlflow.exceptions import MlflowException

    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:  # created by a concurrent run in between
        return str(client.get_experiment_by_name(name).experiment_id)


def _write_report(run_dir: Path, out: Path) -> bool:
    from fedsys.report.document import write_report
    from fedsys.report.runs import load_runs

    try:
        write_report(load_runs([run_dir]), out, title=f"fedsys report: {run_dir.name}")
    except FedsysError as err:
        log.warning("mlflow: no report for %s: %s", run_dir, err)
        return False
    return True


def _import_mlflow() -> Any:
    try:
        import mlflow.tracking
    except ImportError as err:
        raise ConfigError(
            "mlflow-uri needs the mlflow package: pip install 'fedsys[mlflow]' "
            f"(or pip install mlflow-skinny); {err}"
        ) from err
    return mlflow.tracking


@contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """MLflow 3 refuses a file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set; asking for a
    path is the opt-in. The store is cached per URI, so the variable is needed only while
    it is opened; a value the user set is left alone."""
    if file_store_path(uri) is None or _ALLOW_FILE_STORE in os.environ:
        yield
        return
    os.environ[_ALLOW_FILE_STORE] = "true"
    try:
        yield
    finally:
        os.environ.pop(_ALLOW_FILE_STORE, None)


@contextmanager
def _mlflow_errors(uri: str) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"mlflow-uri {uri!r}: {first}") from err
