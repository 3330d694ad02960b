"""The fedsys ServerApp (wiring only; the round loop lives in :mod:`fedsys.coordinator`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsys.config import RunConfig
from fedsys.coordinator.loop import Coordinator


def make_server_app(
    config: RunConfig | None = None,
    *,
    simulated: bool | None = None,
    resume: bool = False,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    on_summary: Callable[[Mapping[str, Any]], None] | None = None,
) -> ServerApp:
    """A ServerApp for ``config`` (or, when None, the run config Flower passes in)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        if config is None:  # launched by Flower (deployment / flwr run): show round lines in its log
            _log_rounds()
        cfg = config or RunConfig.from_mapping(dict(context.run_config))
        run_dir = _run_dir(cfg, context.run_id)
        is_sim = simulated if simulated is not None else cfg.dataset != "node"
        again = resume or bool(cfg.resume_from)
        run_id = "" if is_sim else str(context.run_id)  # deployed: Flower's id is fedsys' id
        summary = Coordinator(
            grid, cfg, run_dir, simulated=is_sim, on_round=on_round, resume=again, run_id=run_id
        ).run()
        if on_summary is not None:
            on_summary(summary)

    return server


def _run_dir(cfg: RunConfig, run_id: int) -> Path:
    """The run directory; under the operator's gate, confined to its runs root."""
    from fedsys.deploy.runs import confined_run_dir
    from fedsys.deploy.server import RUNS_ROOT_ENV
    from fedsys.errors import ConfigError

    runs_root = os.environ.get(RUNS_ROOT_ENV)
    if not runs_root:  # simulation or a local `flwr run`: the caller's own machine
        return Path(cfg.resume_from or cfg.out_dir or f"runs/run-{run_id}")
    try:
        return confined_run_dir(cfg, runs_root=Path(runs_root), run_id=run_id)
    except ConfigError as err:
        logging.getLogger("fedsys").error("run %d refused: %s", run_id, err)
        raise


def _log_rounds() -> None:
    logger = logging.getLogger("fedsys")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s fedsys: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


app = make_server_app()
