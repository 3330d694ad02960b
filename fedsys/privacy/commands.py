"""CLI commands of this subpackage (registered by :mod:`fedsys.cli`): privacy plan, ledger init/show."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedsys.config import TrainConfig
from fedsys.errors import ConfigError

if TYPE_CHECKING:
    from rich.table import Table

    from fedsys.privacy.records import LedgerEntry, LedgerSummary
    from fedsys.privacy.settings import Accountant

privacy_app = typer.Typer(help="Plan DP-SGD noise for a privacy budget.", no_args_is_help=True)
ledger_app = typer.Typer(help="Create or inspect a data holder's privacy ledger.", no_args_is_help=True)
PLAN_ACCOUNTANTS: tuple[Accountant, ...] = ("rdp", "prv")
# A plan assumes what a run does when the scenario says nothing: train.local-epochs' default.
DEFAULT_LOCAL_EPOCHS = TrainConfig().local_epochs


def register(app: typer.Typer) -> None:
    """Attach this subpackage's commands to ``app``."""
    app.add_typer(privacy_app, name="privacy", no_args_is_help=True)
    app.add_typer(ledger_app, name="ledger", no_args_is_help=True)


@privacy_app.command("plan")
def plan(
    target_epsilon: Annotated[float, typer.Option(help="Epsilon the whole schedule may spend.")],
    delta: Annotated[float, typer.Option(help="The delta of the (epsilon, delta) guarantee.")],
    rounds: Annotated[int, typer.Option(help="Rounds the client is sampled in (worst case: all).")],
    local_epochs: Annotated[
        int | None,
        typer.Option(
            help=(
                f"Local epochs per round (default {DEFAULT_LOCAL_EPOCHS}, a run's train.local-epochs "
                "default; not with --local-steps)."
            )
        ),
    ] = None,
    local_steps: Annotated[int | None, typer.Option(help="Local DP-SGD steps per round.")] = None,
    sample_rate: Annotated[float | None, typer.Option(help="Poisson sampling rate q of every step.")] = None,
    dataset_size: Annotated[
        int | None, typer.Option(help="Client's training examples N (with --batch-size).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Expected batch size B (with --dataset-size).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    mode: Annotated[
        str,
        typer.Option(
            help="local (DP-SGD at each holder) or distributed (DP-FedSGD, noise in shares inside "
            "SecAgg+: one step per round; needs --dataset-size, --batch-size and --dim)."
        ),
    ] = "local",
    dim: Annotated[int | None, typer.Option(help="Distributed: the model's number of weights.")] = None,
    clients: Annotated[int, typer.Option(help="Distributed: holders per round.")] = 5,
    threshold: Annotated[
        int, typer.Option(help="Distributed: SecAgg+ threshold t (each holder adds 1/t of the noise).")
    ] = 3,
    bits: Annotated[int, typer.Option(help="Distributed: ring bits per coordinate.")] = 16,
    clip: Annotated[float, typer.Option(help="Distributed: per-record L2 clip (dp.max-grad-norm).")] = 1.0,
    local_noise_multiplier: Annotated[
        float,
        typer.Option(
            help="Distributed: the noise floor each holder adds by itself (its vector alone stays DP "
            "if SecAgg+ fails); the plan shows that epsilon too."
        ),
    ] = 0.0,
) -> None:
    """Noise multiplier that makes a client's whole schedule end at --target-epsilon.

    With --mode distributed: the aggregate noise multiplier (dp.noise-multiplier) for --rounds
    DP-FedSGD rounds, with the scale, ring and each holder's noise share it implies.

    With --dataset-size but no --batch-size, suggests a schedule instead: batch sizes ranked
    best first, each with its noise multiplier (RDP), steps and signal-to-noise ratio.

    steps = rounds x local steps per round. With --dataset-size N --batch-size B the sampling
    rate is Opacus' 1/ceil(N/B) and one local epoch is ceil(N/B) steps; with --sample-rate q
    one epoch is 1/q steps. Without --local-steps or --local-epochs a round is as many epochs
    as a run's default train.local-epochs, so the plan matches a run's defaults. Shows the
    RDP and PRV accountants side by side, each with the epsilon its multiplier actually reaches
    (recomputed, never above the target).
    """
    from fedsys.cli import guarded

    def _run() -> None:
        from fedsys.privacy.planning import noise_for_target, resolve_schedule, suggest_batch_sizes

        if mode == "distributed":
            result = _distributed_plan(target_epsilon, delta, rounds, dataset_size, batch_size, dim, clients,
                                       threshold, bits, clip, local_noise_multiplier)  # fmt: skip
            typer.echo(json.dumps(result, indent=2) if as_json else _format_distributed(result))
            return
        if mode != "local":
            raise ConfigError(f'--mode must be "local" or "distributed", got {mode!r}')
        epochs = DEFAULT_LOCAL_EPOCHS if local_epochs is None and local_steps is None else local_epochs
        if dataset_size is not None and batch_size is None and sample_rate is None and local_steps is None:
            candidates = suggest_batch_sizes(
                target_epsilon=target_epsilon,
                target_delta=delta,
                dataset_size=dataset_size,
                rounds=rounds,
                local_epochs=DEFAULT_LOCAL_EPOCHS if epochs is None else epochs,
            )
            suggestion = _suggestion(target_epsilon, delta, dataset_size, candidates)
            if as_json:
                typer.echo(json.dumps(suggestion, indent=2))
            else:
                _print_suggestion(suggestion)
            return
        schedule = resolve_schedule(
            rounds=rounds,
            local_epochs=epochs,
            local_steps=local_steps,
            sample_rate=sample_rate,
            dataset_size=dataset_size,
            batch_size=batch_size,
        )
        plans: list[dict[str, Any]] = []
        for accountant in PLAN_ACCOUNTANTS:
            sigma = noise_for_target(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=schedule.sample_rate,
                steps=schedule.steps,
                accountant=accountant,
            )
            epsilon = schedule.epsilon(sigma, target_delta=delta, accountant=accountant)
            plans.append({"accountant": accountant, "noise_multiplier": sigma, "epsilon": epsilon})
        result = {
            "target_epsilon": target_epsilon,
            "target_delta": delta,
            "sample_rate": schedule.sample_rate,
            "rounds": schedule.rounds,
            "steps_per_round": schedule.steps_per_round,
            "steps": schedule.steps,
            "plans": plans,
        }
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        else:
            _print_plan(result)

    guarded(_run)


def _suggestion(
    target_epsilon: float, delta: float, dataset_size: int, candidates: list[Any]
) -> dict[str, Any]:
    rows = [
        {
            "batch_size": c.batch_size,
            "sample_rate": c.schedule.sample_rate,
            "rounds": c.schedule.rounds,
            "steps_per_round": c.schedule.steps_per_round,
            "steps": c.schedule.steps,
            "noise_multiplier": c.noise_multiplier,
            "signal_to_noise": c.signal_to_noise,
        }
        for c in candidates
    ]
    return {
        "target_epsilon": target_epsilon,
        "target_delta": delta,
        "dataset_size": dataset_size,
        "accountant": "rdp",
        "suggested": rows[0],
        "candidates": rows,
    }


def _print_suggestion(result: dict[str, Any]) -> None:
    from rich.table import Table

    from fedsys.cli import stdout

    table = Table(
        title=(
            f"ε ≤ {result['target_epsilon']:g} at δ = {result['target_delta']:g} for "
            f"{result['dataset_size']} records (RDP), best first"
        )
    )
    for column in ("batch size", "q", "steps", "noise multiplier", "signal/noise"):
        table.add_column(column, justify="right")
    for row in result["candidates"]:
        table.add_row(
            str(row["batch_size"]),
            f"{row['sample_rate']:.4g}",
            f"{row['steps']} ({row['rounds']} × {row['steps_per_round']})",
            f"{row['noise_multiplier']:.4f}",
            f"{row['signal_to_noise']:.1f}",
        )
    stdout.print(table)
    best = result["suggested"]
    stdout.print(
        f"suggested: --batch-size {best['batch_size']} with noise multiplier "
        f"{best['noise_multiplier']:.4f} (dp.target-epsilon = {result['target_epsilon']:g} does "
        "this per holder); scale the learning rate with the batch size",
        highlight=False,
    )


def _print_plan(result: dict[str, Any]) -> None:
    from rich.table import Table

    from fedsys.cli import stdout

    table = Table(
        title=(
            f"ε ≤ {result['target_epsilon']:g} at δ = {result['target_delta']:g}: "
            f"{result['steps']} steps ({result['rounds']} rounds × {result['steps_per_round']}) "
            f"at q = {result['sample_rate']:.6g}"
        )
    )
    table.add_column("accountant")
    table.add_column("noise multiplier", justify="right")
    table.add_column("resulting ε", justify="right")
    for row in result["plans"]:
        table.add_row(row["accountant"], f"{row['noise_multiplier']:.4f}", f"{row['epsilon']:.4f}")
    stdout.print(table)


def _distributed_plan(
    target: float,
    delta: float,
    rounds: int,
    dataset_size: int | None,
    batch_size: int | None,
    dim: int | None,
    clients: int,
    threshold: int,
    bits: int,
    clip: float,
    local_noise_multiplier: float = 0.0,
) -> dict[str, Any]:
    """The public parameters of a distributed-DP run that ends at ``target`` (see ``plan --mode``)."""
    from fedsys.config import RunConfig
    from fedsys.privacy.distributed import epsilon_of
    from fedsys.privacy.distributed_round import local_epsilon, resolve_noise, round_segment, server_encoding
    from fedsys.privacy.dpsgd import sample_rate_for

    if dataset_size is None or batch_size is None or dim is None:
        raise ConfigError("--mode distributed needs --dataset-size, --batch-size and --dim")
    config = RunConfig().replace(
        {
            "num-rounds": rounds,
            "train.batch-size": batch_size,
            "dp.mode": "distributed",
            "dp.target-epsilon": target,
            "dp.bits": bits,
            "dp.max-grad-norm": clip,
            "budget.target-delta": delta,
            "simulation.num-clients": clients,
            "sampling.clients-per-round": clients,
            "secagg.threshold": threshold,
            "dp.local-noise-multiplier": local_noise_multiplier,
        }
    )
    resolved = resolve_noise(config, sizes=[dataset_size], dim=dim)
    enc = server_encoding(resolved, dim=dim, threshold=threshold, participants=clients)
    rate = sample_rate_for(dataset_size, batch_size)
    history = [replace(round_segment(enc, rate), steps=rounds)]
    return {
        "mode": "distributed",
        "target_epsilon": target,
        "target_delta": delta,
        "sample_rate": rate,
        "rounds": rounds,
        "noise_multiplier": resolved.dp.noise_multiplier,
        "epsilon": epsilon_of([], history, delta),
        "gamma": enc.gamma,
        "ring_bits": enc.ring_bits,
        "noise_mu_total": enc.noise_mu_total,
        "noise_mu_share": enc.noise_mu,
        "local_noise_multiplier": local_noise_multiplier,
        # one holder's vectors alone over the schedule (SecAgg+ broken): its share or its floor
        "local_epsilon": local_epsilon(enc, rate, rounds, delta),
        "threshold": threshold,
        "clients": clients,
        "wrap_probability": enc.wrap_probability,
    }


def _format_distributed(plan: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"distributed DP-FedSGD: {plan['rounds']} rounds at sampling rate {plan['sample_rate']:.4g}, "
            f"{plan['clients']} holders, threshold {plan['threshold']}",
            f"  --set dp.noise-multiplier={math.ceil(plan['noise_multiplier'] * 1000) / 1000:g}  "
            f"(epsilon {plan['epsilon']:.4g} at delta {plan['target_delta']:g}; RDP, Skellam)",
            f"  ring {plan['ring_bits']} bits per coordinate, scale gamma {plan['gamma']:.4g}, "
            f"wrap-around probability <= {plan['wrap_probability']:.1e} per round",
            f"  each holder adds Skellam noise mu {plan['noise_mu_share']:.4g}; any {plan['threshold']} "
            f"together carry mu {plan['noise_mu_total']:.4g}",
            f"  one holder's vectors alone, if SecAgg+ failed: epsilon {plan['local_epsilon']:.4g}"
            + (
                f" (local floor {plan['local_noise_multiplier']:g})"
                if plan["local_noise_multiplier"]
                else " (no local floor: --local-noise-multiplier)"
            ),
        ]
    )


@ledger_app.command("init")
def ledger_init(
    path: Annotated[Path, typer.Argument(help="Where the new privacy ledger (SQLite file) goes.")],
) -> None:
    """Create a data holder's privacy ledger, once, before its first `fedsys client start`.

    A client never creates its ledger itself: a missing, empty or damaged ledger is refused,
    so losing it cannot silently hand out a fresh budget. This command never replaces an
    existing file.
    """
    from fedsys.cli import guarded

    def _run() -> None:
        from fedsys.privacy.ledger import PrivacyLedger

        typer.echo(f"created privacy ledger {PrivacyLedger.init(path)}")

    guarded(_run)


@ledger_app.command("show")
def ledger_show(
    path: Annotated[Path, typer.Argument(help="The client's privacy ledger (SQLite file).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print entries and totals as JSON.")] = False,
) -> None:
    """Every entry of a privacy ledger, then the total spend per declared data set (budget).

    Totals are evaluated over each budget's whole history with its latest accountant and
    delta; open reservations count with their planned steps (fail closed). A budget whose
    data changed (more than one data fingerprint) is flagged; its spend still counts.

    In a terminal (or with COLUMNS set) a table wider than the window is split into several, each
    led by the entry id; piped or redirected, each entry stays on one line.
    """
    from fedsys.cli import guarded

    def _run() -> None:
        entries, totals = read_ledger(path)
        if as_json:
            payload = {
                "ledger": str(path),
                "entries": [asdict(entry) for entry in entries],
                "totals": [asdict(total) for total in totals],
            }
            typer.echo(json.dumps(payload, indent=2))
        else:
            _print_ledger(path, entries, totals)

    guarded(_run)


def read_ledger(path: Path) -> tuple[list[LedgerEntry], list[LedgerSummary]]:
    """All entries of a ledger (per budget key, oldest first) and its per-budget totals.

    Raises:
        LedgerError: the file is missing, empty, not a ledger or corrupt.
    """
    from fedsys.privacy.ledger import PrivacyLedger

    with PrivacyLedger.open(path) as ledger:  # never creates one
        totals = ledger.summary()
        entries = [entry for total in totals for entry in ledger.entries(total.budget_key)]
    return entries, totals


_RIGHT = {"id", "round", "steps", "σ", "q", "δ", "ε", "entries", "open", "data versions"}


def _print_ledger(path: Path, entries: list[LedgerEntry], totals: list[LedgerSummary]) -> None:
    # most telling first: where splitting is needed, the first table says what was spent when
    columns = ["id", "run", "round", "status", "steps", "ε", "budget", "data", "σ", "q", "acct", "δ"]
    rows = []
    for entry in entries:
        steps = (
            str(entry.steps) if entry.steps == entry.planned_steps else f"{entry.steps}/{entry.planned_steps}"
        )
        rows.append(
            [
                str(entry.id),
                entry.run_id,
                str(entry.round),
                entry.status,
                steps,
                f"{entry.epsilon_before:.3f} → {entry.epsilon_after:.3f}",
                entry.budget_key,
                entry.fingerprint[:8],
                f"{entry.noise_multiplier:.4g}",
                f"{entry.sample_rate:.4g}",
                entry.accountant,
                f"{entry.target_delta:g}",
                _short_time(entry.reserved_at),
                _short_time(entry.committed_at),
            ]
        )
    _print_fitted(f"privacy ledger {path}", [*columns, "reserved", "committed"], rows)
    summary_rows = [
        [
            total.budget_key,
            str(total.entries),
            str(total.steps),
            str(total.open_reservations),
            f"{total.epsilon:.4f}",
            total.accountant,
            f"{total.target_delta:g}",
            f"{total.fingerprints} (changed)" if total.data_changed else str(total.fingerprints),
        ]
        for total in totals
    ]
    summary_columns = ["budget", "entries", "steps", "open", "ε", "accountant", "δ", "data versions"]
    _print_fitted("total per budget (declared data set)", summary_columns, summary_rows)
    _print_notes(totals)


def _print_notes(totals: list[LedgerSummary]) -> None:
    from fedsys.cli import stdout
    from fedsys.privacy.ledger import LEGACY_BUDGET_KEY

    for total in totals:
        if total.budget_key == LEGACY_BUDGET_KEY:
            stdout.print(
                f"{LEGACY_BUDGET_KEY}: entries from before budgets had names; they count for every budget"
            )
        elif total.data_changed:
            stdout.print(
                f"WARNING: the data of budget {total.budget_key!r} changed {total.fingerprints - 1} time(s); "
                "all of its spend still counts"
            )


def _print_fitted(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """Print a table no wider than the output: in a terminal or with ``COLUMNS`` set, a table too
    wide for it is split into several, each repeating the first (key) column; anywhere else (a
    pipe, a file) it is printed whole at its natural width, one line per row."""
    from fedsys.cli import stdout

    widths = [max([len(name), *(len(row[i]) for row in rows)]) + 3 for i, name in enumerate(columns)]
    natural = 1 + sum(widths)
    declared = os.environ.get("COLUMNS", "")
    if declared.isdigit() and int(declared) > 0:
        limit = int(declared)
    else:
        limit = stdout.width if stdout.is_terminal else max(stdout.width, natural)
    groups: list[list[int]] = [[0]]
    for index in range(1, len(columns)):
        if len(groups[-1]) > 1 and 1 + sum(widths[i] for i in [*groups[-1], index]) > limit:
            groups.append([0])
        groups[-1].append(index)
    for number, group in enumerate(groups):
        part = f" ({number + 1}/{len(groups)})" if len(groups) > 1 else ""
        _print_at(
            _table(title + part, [columns[i] for i in group], [[r[i] for i in group] for r in rows]), limit
        )


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for name in columns:
        table.add_column(name, justify="right" if name in _RIGHT else "left", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def _print_at(table: Table, width: int) -> None:
    from rich.console import Console

    from fedsys.cli import stdout

    Console(file=stdout.file, width=width).print(table)


def _short_time(stamp: str | None) -> str:
    """``2024-05-01T12:00:00.123456+00:00`` as ``2024-05-01 12:00:00``; ``-`` for none."""
    if stamp is None:
        return "-"
    return stamp.replace("T", " ")[:19]
