"""The ``fedsys`` command: parses options, calls the library, prints.

Any :class:`~fedsys.errors.FedsysError` becomes one red line and exit code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from fedsys.config import RunConfig
from fedsys.errors import ConfigError, FedsysError

console = Console(stderr=True)
stdout = Console()
app = typer.Typer(
    name="fedsys",
    help=(
        "Privacy-preserving federated learning: Flower for orchestration, Opacus DP-SGD at every "
        "client (each client keeps and enforces its own privacy ledger), and SecAgg+ secure "
        "aggregation so the server learns only the sum of updates."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state: dict[str, bool] = {"debug": False}
T = TypeVar("T")


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def guarded(fn: Callable[[], T]) -> T:
    """Run ``fn``; a FedsysError becomes a one-line message and exit code 2."""
    try:
        return fn()
    except FedsysError as err:
        if _state["debug"]:
            raise
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def load_scenario(scenario: Path | None, overrides: dict[str, Any], sets: list[str]) -> RunConfig:
    """Defaults, then the scenario file, then ``--set`` pairs, then explicit flags."""
    base = RunConfig.from_toml(scenario) if scenario else RunConfig()
    pairs: dict[str, Any] = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set wants KEY=VALUE, got {item!r}")
        pairs[key.strip()] = _parse_value(raw.strip())
    flags = {k: v for k, v in overrides.items() if v is not None}
    return base.replace({**pairs, **flags})


def _parse_value(raw: str) -> Any:
    import tomllib

    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


SIMULATE_HELP = (
    "Run a federated simulation with Flower's simulation engine and write a run directory.\n\n"
    "Precedence: built-in defaults < SCENARIO file < --set KEY=VALUE < explicit flags. "
    "The run directory holds config.toml (the resolved scenario), metrics.jsonl (one line per round), "
    "model.pt (final global weights), summary.json, checkpoint.npz and each simulated client's "
    "privacy ledger under ledgers/."
)


@app.command(help=SIMULATE_HELP)
def simulate(
    scenario: Annotated[
        Path | None,
        typer.Argument(help="Scenario TOML (see simulations/). Defaults: digits, DP-SGD, SecAgg+."),
    ] = None,
    num_clients: Annotated[int | None, typer.Option(help="Number of virtual clients.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Number of federated rounds.")] = None,
    clients_per_round: Annotated[int | None, typer.Option(help="Clients sampled per round.")] = None,
    partition: Annotated[str | None, typer.Option(help="iid | dirichlet:ALPHA | shards:K | natural.")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="digits | mnist-5k | breast-cancer | synthetic:ALPHA,BETA | PATH (csv/parquet/npz)."
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="logreg | mlp | cnn | tanh-mlp | tanh-cnn.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for data, sampling and training.")] = None,
    dp: Annotated[bool | None, typer.Option("--dp/--no-dp", help="Client-side DP-SGD on/off.")] = None,
    target_epsilon: Annotated[
        float | None,
        typer.Option(help="Calibrate each client's noise so the whole run reaches this epsilon."),
    ] = None,
    noise_multiplier: Annotated[float | None, typer.Option(help="DP-SGD noise multiplier.")] = None,
    secagg: Annotated[
        bool | None, typer.Option("--secagg/--no-secagg", help="Secure aggregation on/off.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda.")] = None,
    num_cpus: Annotated[float | None, typer.Option(help="CPU cores per virtual client.")] = None,
    num_gpus: Annotated[
        float | None, typer.Option(help="GPU fraction per virtual client (e.g. 0.25).")
    ] = None,
    ray_address: Annotated[str | None, typer.Option(help="Use an existing Ray cluster HOST:PORT.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<scenario>-<time>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any config key, e.g. --set dp.noise-multiplier=1.2")
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's and Ray's logs.")] = False,
) -> None:
    overrides = {
        "simulation.num-clients": num_clients,
        "num-rounds": rounds,
        "partition": partition,
        "sampling.clients-per-round": clients_per_round,
        "dataset": dataset,
        "model": model,
        "seed": seed,
        "dp.enabled": dp,
        "dp.target-epsilon": target_epsilon,
        "dp.noise-multiplier": noise_multiplier,
        "secagg.enabled": secagg,
        "device": device,
        "simulation.num-gpus": num_gpus,
        "simulation.num-cpus": num_cpus,
        "simulation.ray-address": ray_address,
    }

    def _run() -> None:
        from fedsys.console import RoundDisplay
        from fedsys.data.federated import check_scenario_data
        from simulations.harness import run_scenario

        if resume:
            if out is None:
                raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
            config = load_scenario(out / "config.toml", {}, [])
        else:
            config = load_scenario(scenario, overrides, set_ or [])
        check_scenario_data(config)
        run_dir = (
            out
            or Path("runs") / f"{scenario.stem if scenario else 'default'}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        with RoundDisplay(console, config) as display:
            summary = run_scenario(config, run_dir, resume=resume, on_round=display.update, verbose=verbose)
        display.print_summary(summary)
        stdout.print(str(summary.get("run-dir", run_dir)), highlight=False, soft_wrap=True)

    guarded(_run)


def _register_groups() -> None:
    """Attach the commands that live beside their subject (deployment, reporting)."""
    from fedsys.deploy import commands as deploy_commands
    from fedsys.privacy import commands as privacy_commands
    from fedsys.report import commands as report_commands

    deploy_commands.register(app)
    privacy_commands.register(app)
    report_commands.register(app)


_register_groups()


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="fedsys")
