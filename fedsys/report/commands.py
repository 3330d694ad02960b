"""CLI commands of this subpackage (registered by :mod:`fedsys.cli`): ``report`` and ``sweep``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from fedsys.privacy.central import CentralResult


def register(app: typer.Typer) -> None:
    """Attach this subpackage's commands to ``app``."""
    app.command(name="report")(report)
    app.command(name="sweep")(sweep)


def report(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="One or more run directories (from fedsys simulate or sweep).")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write report.md and the PNGs (default: RUN_DIR/report for one run)."),
    ] = None,
    title: Annotated[str, typer.Option(help="Heading of report.md.")] = "fedsys report",
) -> None:
    """Plot one run, or compare several: accuracy, loss, ε per client, participation.

    Writes PNGs, report.md (embedding them, with a table of key numbers) and report.json.
    With several runs it also plots final accuracy against final ε.
    """
    from fedsys.cli import guarded, stdout
    from fedsys.report.document import write_report
    from fedsys.report.runs import load_runs

    def _run() -> None:
        runs = load_runs(run_dirs)
        target = out or (
            run_dirs[0] / "report" if len(run_dirs) == 1 else Path(f"report-{time.strftime('%Y%m%d-%H%M%S')}")
        )
        written = write_report(runs, target, title=title)
        stdout.print(str(written.markdown), highlight=False, soft_wrap=True)

    guarded(_run)


def sweep(
    scenario: Annotated[Path, typer.Argument(help="Scenario TOML (see simulations/).")],
    target_epsilon: Annotated[
        str,
        typer.Option(
            help="Comma-separated target epsilons; inf = non-private baseline (dp.enabled = false)."
        ),
    ] = "0.5,1,3,8,inf",
    out: Annotated[
        Path | None, typer.Option(help="Sweep directory (default: runs/sweep-<scenario>-<time>).")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Number of federated rounds.")] = None,
    num_clients: Annotated[int | None, typer.Option(help="Number of virtual clients.")] = None,
    clients_per_round: Annotated[int | None, typer.Option(help="Clients sampled per round.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for data, sampling and training.")] = None,
    secagg: Annotated[
        bool | None, typer.Option("--secagg/--no-secagg", help="Secure aggregation on/off.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda.")] = None,
    num_cpus: Annotated[float | None, typer.Option(help="CPUs per virtual client.")] = None,
    num_gpus: Annotated[float | None, typer.Option(help="GPU fraction per virtual client.")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Use an existing Ray cluster HOST:PORT.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any config key, e.g. --set train.lr=0.2")
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's and Ray's logs.")] = False,
    allow_partial: Annotated[
        bool, typer.Option("--allow-partial", help="Run a target even if its schedule exceeds a budget.")
    ] = False,
    central: Annotated[
        bool,
        typer.Option(
            "--central/--no-central",
            help="Also train central DP-SGD on the pooled client data at each target (the reference).",
        ),
    ] = True,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated seeds, e.g. 0,1,2: each target runs once per seed (not with --seed)."
        ),
    ] = None,
) -> None:
    """Run SCENARIO once per target epsilon and write one privacy-utility report.

    For a finite target each client calibrates its own noise multiplier so that, sampled in
    every round, it ends exactly at the target (Opacus' get_noise_multiplier with its sampling
    rate and rounds x local steps), and each client's budget max-epsilon is set to the target
    so its ledger enforces it.

    With --central (default) each target also trains the central reference: DP-SGD on the
    union of the clients' training data, same model, test set, clipping norm, learning rate
    and batch size, for rounds x local epochs epochs, its noise chosen for the same target.
    The report opens with a table of federated and central accuracy and epsilon per target;
    with --seeds each cell is the mean (min-max) over seeds.
    """
    from fedsys.cli import (
        check_budget,
        console,
        exit_if_stopped_early,
        guarded,
        load_scenario,
        read_summaries,
        stdout,
    )

    overrides = {
        "num-rounds": rounds,
        "simulation.num-clients": num_clients,
        "sampling.clients-per-round": clients_per_round,
        "seed": seed,
        "secagg.enabled": secagg,
        "device": device,
        "simulation.num-cpus": num_cpus,
        "simulation.num-gpus": num_gpus,
        "simulation.ray-address": ray_address,
    }

    def _run() -> None:
        from fedsys.config import RunConfig
        from fedsys.console import RoundDisplay
        from fedsys.data.federated import check_scenario_data
        from fedsys.errors import ConfigError
        from fedsys.report.document import write_report
        from fedsys.report.runs import load_runs
        from fedsys.report.sweep import (
            BudgetPlan,
            central_reference,
            load_comparison,
            parse_seeds,
            parse_targets,
            run_sweep,
        )
        from simulations.harness import run_scenario

        targets = parse_targets(target_epsilon)
        if seeds is not None and seed is not None:
            raise ConfigError(f"give --seed or --seeds, not both (got {seed} and {seeds!r})")
        seed_list = parse_seeds(seeds) if seeds is not None else None
        config = load_scenario(scenario, overrides, set_ or [])
        check_scenario_data(config)
        folder = out or Path("runs") / f"sweep-{scenario.stem}-{time.strftime('%Y%m%d-%H%M%S')}"

        def announce(plan: BudgetPlan) -> None:
            at = f" (seed {plan.seed})" if seed_list and len(seed_list) > 1 else ""
            if plan.private:
                console.print(
                    f"[bold]target ε {plan.target_epsilon:g}{at}[/]: most exposed client's noise multiplier "
                    f"{plan.noise_multiplier:.4f} ({plan.steps} steps at sampling rate "
                    f"{plan.sample_rate:.4g} reach ε {plan.planned_epsilon:.4f})",
                    highlight=False,
                )
            else:
                console.print(f"[bold]target ε inf{at}[/]: non-private baseline (DP off)", highlight=False)

        def announce_central(result: CentralResult) -> None:
            spent = (
                f"ε {result.epsilon:.4f}, noise multiplier {result.noise_multiplier:.4f}"
                if result.epsilon is not None and result.noise_multiplier is not None
                else "no DP"
            )
            console.print(
                f"[bold]central reference[/]: accuracy {100 * result.accuracy:.2f}% ({spent}; "
                f"{result.epochs} epochs, {result.steps} steps over {result.num_examples} examples, "
                f"{result.seconds:.1f} s)",
                highlight=False,
            )

        def simulate(cfg: RunConfig, run_dir: Path) -> Mapping[str, Any]:
            check_budget(cfg, allow_partial=allow_partial)  # before this target's first round
            with RoundDisplay(console, cfg) as display:
                return run_scenario(cfg, run_dir, on_round=display.update, verbose=verbose)

        run_dirs = run_sweep(
            config,
            targets,
            folder,
            simulate=simulate,
            seeds=seed_list,
            central=central_reference if central else None,
            on_plan=announce,
            on_central=announce_central,
        )
        written = write_report(
            load_runs(run_dirs),
            folder,
            title=f"Privacy-utility sweep: {scenario.stem}",
            comparison=load_comparison(folder),
        )
        stdout.print(str(written.markdown), highlight=False, soft_wrap=True)
        exit_if_stopped_early(read_summaries(run_dirs))

    guarded(_run)
