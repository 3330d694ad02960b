"""Run a scenario with Flower's simulation engine (Ray), using the same ServerApp/ClientApp
as deployment. ``fedsys simulate`` is the user-facing entry; this module is its engine room.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp

from clients.app import make_client_app
from fedsys.config import RunConfig
from fedsys.node.pki import SIMULATED_PKI_SEED
from server.app import make_server_app

SCENARIO_DIR = Path(__file__).parent

log = logging.getLogger("fedsys")


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


def backend_config(config: RunConfig) -> dict[str, Any]:
    """Ray backend settings: resources per virtual client and where Ray runs."""
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.ERROR,
        "log_to_driver": False,
    }
    if config.simulation.ray_address:
        init_args["address"] = config.simulation.ray_address
    else:
        init_args["num_cpus"] = os.cpu_count() or 1
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
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # run_simulation is Flower's in-process simulation API; it warns that `flwr run`
        # is preferred, but only the in-process API lets us drive a live progress display.
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=server,
            client_app=client,
            num_supernodes=config.simulation.num_clients,
            backend_config=backend_config(config),
            verbose_logging=verbose,
        )
    return summary
