"""Run a scenario with Flower's simulation engine (Ray), using the same ServerApp/ClientApp
as deployment. ``fedsys simulate`` is the user-facing entry; this module is its engine room.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp

from clients.app import make_client_app
from fedsys.config import RunConfig
from fedsys.node.pki import SIMULATED_PKI_SEED
from server.app import make_server_app

SCENARIO_DIR = Path(__file__).parent

log = logging.getLogger("fedsys")
# Flower's notice that run_simulation is deprecated (we need the in-process API for the live
# display) and Ray's FutureWarning about CUDA_VISIBLE_DEVICES when num_gpus=0 (we keep Ray's
# current behaviour: a virtual client without a GPU share sees no GPU): shown with --verbose only.
RUN_SIMULATION_NOTICE = "The `run_simulation` function is deprecated"
RAY_GPU_NOTICE = "Tip: In future versions of Ray"


def local_settings(config: RunConfig) -> dict[str, Any]:
    """What each simulated data holder sets for itself (the scenario stands in for all of them).

    Includes a simulated PKI for SecAgg+ against a malicious server: one fresh seed per call (per
    run), from which every virtual client derives its own identity and its peers' public keys.
    """
    budget = config.to_mapping()["budget"]
    return {f"budget.{k}": v for k, v in budget.items()} | {
        "ledger-dir": config.ledger_dir,
        SIMULATED_PKI_SEED: os.urandom(32).hex(),
    }


def backend_config(config: RunConfig, *, ray_temp_dir: Path | None = None) -> dict[str, Any]:
    """Ray backend settings: resources per virtual client and where Ray runs.

    ``ray_temp_dir`` is where a Ray that fedsys starts itself keeps its session (never used with
    ``simulation.ray-address``: that cluster's files are not ours).
    """
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.ERROR,
        "log_to_driver": False,
    }
    if config.simulation.ray_address:
        init_args["address"] = config.simulation.ray_address
    else:
        init_args["num_cpus"] = os.cpu_count() or 1
        if ray_temp_dir is not None:
            init_args["_temp_dir"] = str(ray_temp_dir)
    return {
        "client_resources": {"num_cpus": config.simulation.num_cpus, "num_gpus": config.simulation.num_gpus},
        "init_args": init_args,
    }


def distributed_noise(config: RunConfig) -> RunConfig:
    """In distributed-DP mode, resolve ``dp.target-epsilon`` to the public aggregate noise multiplier
    (:func:`fedsys.privacy.distributed_round.resolve_noise`); any other config is returned as it is."""
    if config.dp.mode != "distributed" or config.dp.target_epsilon <= 0:
        return config
    from fedsys.privacy.distributed_round import resolve_noise
    from fedsys.privacy.precheck import model_dim, simulated_train_sizes

    resolved = resolve_noise(config, sizes=simulated_train_sizes(config), dim=model_dim(config))
    log.info(
        "distributed DP: the aggregate noise multiplier for epsilon %g over %d rounds is %.4g",
        config.dp.target_epsilon,
        config.num_rounds,
        resolved.dp.noise_multiplier,
    )
    return resolved


def run_scenario(
    config: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    verbose: bool = False,
    client_app: ClientApp | None = None,
    holder_extras: Mapping[str, Any] | None = None,
) -> Mapping[str, Any]:
    """Simulate ``config`` and write its results to ``run_dir``; returns the summary.

    ``client_app`` replaces fedsys' ClientApp (tests use it to inject faulty clients).
    ``holder_extras`` adds holder-side settings to every simulated holder's own (``fedsys audit``
    passes ``audit-canaries`` this way, so the server never sees or chooses the canaries).
    """
    from flwr.simulation import run_simulation

    run_dir = run_dir.resolve()
    config = config.replace(
        {"out-dir": str(run_dir), "ledger-dir": config.ledger_dir or str(run_dir / "ledgers")}
    )
    config = distributed_noise(config)
    summary: dict[str, Any] = {}
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    server = make_server_app(
        config, simulated=True, resume=resume, on_round=on_round, on_summary=summary.update
    )
    client = client_app or make_client_app(local_settings(config) | dict(holder_extras or {}))
    with quiet_engine(verbose=verbose), ray_session_dir(config) as ray_temp_dir:
        run_simulation(
            server_app=server,
            client_app=client,
            num_supernodes=config.simulation.num_clients,
            backend_config=backend_config(config, ray_temp_dir=ray_temp_dir),
            verbose_logging=verbose,
        )
    return summary


class _DropNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return RUN_SIMULATION_NOTICE not in record.getMessage()


@contextmanager
def quiet_engine(*, verbose: bool) -> Iterator[None]:
    """Flower's and Ray's logs for one simulation: warnings and errors only, minus the two
    notices above, unless ``verbose``.

    Flower's logger has its own console handler; Opacus' import-time ``logging.basicConfig``
    gives the root logger one too, so Flower's records would otherwise print twice.
    """
    flwr_log = logging.getLogger("flwr")
    saved = flwr_log.level, flwr_log.propagate
    notice = _DropNotice()
    flwr_log.propagate = False
    if not verbose:
        flwr_log.setLevel(logging.WARNING)
        flwr_log.addFilter(notice)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if not verbose:
                warnings.filterwarnings("ignore", message=RAY_GPU_NOTICE, category=FutureWarning)
            yield
    finally:
        flwr_log.removeFilter(notice)
        flwr_log.setLevel(saved[0])
        flwr_log.propagate = saved[1]


@contextmanager
def ray_session_dir(config: RunConfig) -> Iterator[Path | None]:
    """A private folder for the Ray session fedsys starts, removed afterwards (Ray leaves its
    ``session_*`` folder behind); ``None`` with ``simulation.ray-address`` (not our cluster).

    Under ``/tmp`` (or ``RAY_TMPDIR``) with a short name: Ray's socket paths must fit in 107 bytes.
    """
    if config.simulation.ray_address:
        yield None
        return
    base = os.environ.get("RAY_TMPDIR") or ("/tmp" if os.path.isdir("/tmp") else None)  # noqa: S108
    path = Path(tempfile.mkdtemp(prefix=f"fedsys-ray-{os.getpid()}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
