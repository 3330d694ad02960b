"""The ``fedsys`` command: parses options, calls the library, prints.

Any :class:`~fedsys.errors.FedsysError` becomes one red line and exit code 2; ``--debug``
shows the traceback instead. A simulation that stops before its last round (holders exhausted
their budgets, or too few clients) exits with :data:`EXIT_STOPPED_EARLY` (3).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from fedsys.config import RunConfig
from fedsys.console import DebugAnywhere, FedsysConsole
from fedsys.errors import ConfigError, FedsysError

console = FedsysConsole(stderr=True)
stdout = FedsysConsole()
app = typer.Typer(
    cls=DebugAnywhere,
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
EXIT_STOPPED_EARLY = 3
ALLOW_PARTIAL_HELP = (
    "Run even if the schedule would exceed a client's budget.max-epsilon: clients then refuse "
    "(or truncate, per budget.policy) once their budget is spent, and the run stops early."
)


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks on errors (anywhere on the line).")
    ] = False,
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


def check_budget(config: RunConfig, *, allow_partial: bool) -> None:
    """Before any round, check the whole schedule against every simulated client's budget.

    Raises:
        BudgetExceededError: a client's budget does not fit (one line; exit code 2 via ``guarded``),
            unless ``allow_partial``, which prints the explanation as a warning instead.
    """
    from fedsys.privacy.precheck import check_schedule

    problem = check_schedule(config, allow_partial=allow_partial)
    if problem is not None:
        console.print(
            f"[bold yellow]warning:[/] {problem}; running anyway (--allow-partial)",
            highlight=False,
            soft_wrap=True,
        )


def exit_if_stopped_early(summaries: Mapping[Path, Mapping[str, Any]]) -> None:
    """End with a line saying why each run that stopped early did, then exit code 3; else return.

    Args:
        summaries: Each run directory's summary (``summary.json``), whose ``stop-reason`` is set
            only when the run ended before its last round.
    """
    stopped = {path: str(s["stop-reason"]) for path, s in summaries.items() if s.get("stop-reason")}
    for path, reason in stopped.items():
        where = f" ({path})" if len(summaries) > 1 else ""
        console.print(
            f"[bold yellow]run stopped early{where}, exit code {EXIT_STOPPED_EARLY}:[/] {reason}",
            highlight=False,
            soft_wrap=True,
        )
    if stopped:
        raise typer.Exit(EXIT_STOPPED_EARLY)


def read_summaries(run_dirs: Sequence[Path]) -> dict[Path, Mapping[str, Any]]:
    """Each run directory's ``summary.json`` (an empty mapping where it is missing or unreadable)."""
    from fedsys.results import SUMMARY_FILE

    summaries: dict[Path, Mapping[str, Any]] = {}
    for run_dir in run_dirs:
        try:
            data = json.loads((run_dir / SUMMARY_FILE).read_text())
        except (OSError, ValueError):
            data = {}
        summaries[run_dir] = data if isinstance(data, dict) else {}
    return summaries


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
    "privacy ledger under ledgers/.\n\n"
    "Before any round, the whole schedule is checked against every client's budget.max-epsilon "
    "(the epsilon a client would spend if sampled in every round; with --target-epsilon, that the "
    "target fits): a schedule that does not fit stops here with exit code 2 and what would fit, "
    "unless --allow-partial.\n\n"
    "Exit codes: 0 every round ran; 2 an error, or a schedule over budget (nothing ran); "
    f"{EXIT_STOPPED_EARLY} the run stopped early (clients exhausted their budgets, or too few clients)."
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
            help="digits | mnist-5k | breast-cancer | synthetic:ALPHA,BETA | PATH (csv/parquet/npz) | "
            "package.module:loader (your function returning (features, labels) or a torch Dataset)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="logreg | mlp | cnn | tanh-mlp | tanh-cnn | lstm | transformer | "
            "package.module:factory (your function of "
            "feature shape and number of classes returning an nn.Module; importable on every side)."
        ),
    ] = None,
    fix_model: Annotated[
        bool | None,
        typer.Option(
            "--fix-model/--no-fix-model",
            help="Apply Opacus' ModuleValidator.fix to the model (BatchNorm -> GroupNorm, ...) everywhere.",
        ),
    ] = None,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            "--tensorboard", metavar="DIR", help="Write per-round TensorBoard scalars to DIR/<run>."
        ),
    ] = None,
    mlflow: Annotated[
        str | None,
        typer.Option(
            "--mlflow",
            metavar="URI",
            help="Log config, per-round metrics, report and model to MLflow: a path or file: URI "
            "(local file store, offline), sqlite:///PATH or a tracking server.",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for data, sampling and training.")] = None,
    dp: Annotated[bool | None, typer.Option("--dp/--no-dp", help="Client-side DP-SGD on/off.")] = None,
    target_epsilon: Annotated[
        float | None,
        typer.Option(help="Calibrate each client's noise so the whole run reaches this epsilon."),
    ] = None,
    noise_multiplier: Annotated[float | None, typer.Option(help="DP-SGD noise multiplier.")] = None,
    dp_mode: Annotated[
        str | None,
        typer.Option(
            help="local: each holder adds all its DP-SGD noise; distributed: DP-FedSGD with the noise "
            "added in shares inside SecAgg+ (the sum carries all of it)."
        ),
    ] = None,
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
    verbose: Annotated[
        bool,
        typer.Option(
            help="Show Flower's and Ray's logs, including their notices (Flower's run_simulation "
            "deprecation, Ray's GPU-visibility FutureWarning); without it only their warnings and errors."
        ),
    ] = False,
    allow_partial: Annotated[bool, typer.Option("--allow-partial", help=ALLOW_PARTIAL_HELP)] = False,
) -> None:
    overrides = {
        "simulation.num-clients": num_clients,
        "num-rounds": rounds,
        "partition": partition,
        "sampling.clients-per-round": clients_per_round,
        "dataset": dataset,
        "model": model,
        "fix-model": fix_model,
        "tensorboard-dir": str(tensorboard) if tensorboard is not None else None,
        "mlflow-uri": mlflow,
        "seed": seed,
        "dp.enabled": dp,
        "dp.target-epsilon": target_epsilon,
        "dp.noise-multiplier": noise_multiplier,
        "dp.mode": dp_mode,
        "secagg.enabled": secagg,
        "device": device,
        "simulation.num-gpus": num_gpus,
        "simulation.num-cpus": num_cpus,
        "simulation.ray-address": ray_address,
    }

    def _run() -> None:
        from fedsys.api import check_model_and_tracking
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
        check_model_and_tracking(config)
        check_budget(config, allow_partial=allow_partial)
        run_dir = (
            out
            or Path("runs") / f"{scenario.stem if scenario else 'default'}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        with RoundDisplay(console, config) as display:
            summary = run_scenario(config, run_dir, resume=resume, on_round=display.update, verbose=verbose)
        display.print_summary(summary)
        stdout.print(str(summary.get("run-dir", run_dir)), highlight=False, soft_wrap=True)
        exit_if_stopped_early({run_dir: summary})

    guarded(_run)


def _register_groups() -> None:
    """Attach the commands that live beside their subject (deployment, reporting)."""
    from fedsys.audit import commands as audit_commands
    from fedsys.deploy import commands as deploy_commands
    from fedsys.export import commands as export_commands
    from fedsys.privacy import commands as privacy_commands
    from fedsys.report import commands as report_commands

    audit_commands.register(app)
    deploy_commands.register(app)
    export_commands.register(app)
    privacy_commands.register(app)
    report_commands.register(app)


_register_groups()


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="fedsys")
