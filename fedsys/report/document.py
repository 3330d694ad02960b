"""The report itself: key numbers per run, PNG plots, report.md embedding them, report.json."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsys.report import plots
from fedsys.report.runs import RunData
from fedsys.report.sweep import ComparisonRow, Spread

REPORT_FILE = "report.md"
NUMBERS_FILE = "report.json"
COMPARISON_PLOT = "federated-vs-central.png"
HOLDERS_OWN = "each holder's own"  # what a deployed run's server never learns
PLOTS: dict[str, tuple[str, Callable[[Sequence[RunData], Path], bool]]] = {
    "accuracy.png": ("Accuracy per round", plots.plot_accuracy),
    "loss.png": ("Loss per round", plots.plot_loss),
    "epsilon.png": ("Privacy spent per client", plots.plot_epsilon),
    "participation.png": ("Participation per round", plots.plot_participation),
    "privacy-utility.png": ("Privacy-utility trade-off", plots.plot_privacy_utility),
}
_UTILITY_COLUMNS = (
    ("run", "run"),
    ("data / model", "setup"),
    ("clients", "clients"),
    ("rounds", "rounds"),
    ("DP-SGD", "dp"),
    ("SecAgg+", "secagg"),
    ("budget max ε", "budget-max-epsilon"),
    ("final accuracy", "final-accuracy"),
    ("final macro-F1", "final-macro-f1"),
    ("final loss", "final-loss"),
    ("final ε (max over clients)", "final-epsilon"),
    ("ε lower bound (fedsys audit)", "epsilon-lower-bound"),
)
_RUNTIME_COLUMNS = (
    ("run", "run"),
    ("updates ok / failed / declined", "updates"),
    ("round 1 (s)", "first-round-seconds"),
    ("later rounds, median (s)", "median-round-seconds"),
    ("train / aggregate / eval, median (s)", "time-split"),
    ("device", "device"),
    ("CPUs / GPUs per client", "resources"),
)


@dataclass(frozen=True)
class Report:
    """Files a report wrote."""

    markdown: Path
    numbers: Path
    plots: tuple[Path, ...]


def _median(values: Sequence[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else None


def key_numbers(run: RunData) -> dict[str, Any]:
    """The numbers of one run that the tables (and report.json) show."""
    s = run.setting
    seconds = run.series("round-seconds")
    totals = [sum(int(r.get(k) or 0) for r in run.records) for k in plots.TOTAL_KEYS]
    return {
        "run": run.name,
        "path": str(run.path),
        "setup": f"{s('dataset', '?')} / {s('model', '?')}",
        "simulated": run.simulated,
        "clients": _clients_cell(run),
        "rounds": _rounds_cell(run),
        "rounds-completed": run.rounds_with_status("ok"),
        "rounds-abandoned": run.rounds_with_status("abandoned"),
        "private": run.private,
        "dp": _dp_cell(run),
        "noise-multipliers": list(run.noise_multipliers()) if run.private else None,
        "secagg": "on" if s("secagg.enabled", False) else "off",
        "budget-max-epsilon": holders_setting(run, "budget.max-epsilon") if run.private else None,
        "target-delta": _target_delta(run) if run.private else None,
        "final-accuracy": run.last("accuracy") if run.last("accuracy") is not None else _federated_final(run),
        "final-accuracy-source": run.summary.get("final-accuracy-source"),
        "final-macro-f1": run.last("macro-f1"),
        "final-loss": run.last("loss"),
        "final-epsilon": run.final_epsilon() if run.private else None,
        "epsilon-source": run.epsilon_source,
        "epsilon-lower-bound": _audit_lower_bound(run.path),
        "updates": "{} / {} / {}".format(*totals),
        "first-round-seconds": seconds[0] if seconds else None,
        "median-round-seconds": _median(seconds[1:]),
        "time-split": " / ".join(
            _fmt(_median(run.series(k)), ".2f")
            for k in ("train-seconds", "aggregate-seconds", "eval-seconds")
        ),
        "device": s("device", "?") if run.simulated else HOLDERS_OWN,
        "resources": f"{s('simulation.num-cpus', '?')} / {s('simulation.num-gpus', '?')}"
        if run.simulated
        else HOLDERS_OWN,
    }


def _clients_cell(run: RunData) -> str:
    """The clients the run found and how many took part per round (from metrics.jsonl)."""
    seen = run.clients_seen()
    sampled = sorted({int(r["clients-sampled"]) for r in run.records if "clients-sampled" in r})
    per_round = (
        "–" if not sampled else str(sampled[0]) if len(sampled) == 1 else f"{sampled[0]}–{sampled[-1]}"
    )
    return f"{'?' if seen is None else seen} ({per_round} per round)"


def _rounds_cell(run: RunData) -> str:
    """Rounds that released an aggregate, of those planned; abandoned ones named."""
    planned = run.summary.get("rounds-planned", run.setting("num-rounds", "?"))
    cell = f"{run.rounds_with_status('ok')}/{planned}"
    abandoned = run.rounds_with_status("abandoned")
    return cell + (f", {abandoned} abandoned" if abandoned else "")


def _target_delta(run: RunData) -> float | str | None:
    deltas = run.target_deltas()
    if deltas:
        return deltas[0] if len(deltas) == 1 else f"{deltas[0]:g}–{deltas[-1]:g}"
    return holders_setting(run, "budget.target-delta")


def holders_setting(run: RunData, key: str) -> float | str | None:
    """A budget setting of the holders: in simulation the scenario's (it stands in for every
    holder, who is given exactly that); deployed, ``each holder's own`` (the server never learns it)."""
    if not run.simulated:
        return HOLDERS_OWN
    value = run.setting(key)
    return float(value) if isinstance(value, (int, float)) else None


def _audit_lower_bound(run_dir: Path) -> str | None:
    """``fedsys audit``'s empirical lower bound and its confidence, when the run has an audit.json."""
    from fedsys.audit.result import AUDIT_FILE

    try:
        doc = json.loads((run_dir / AUDIT_FILE).read_text())
        bound, confidence = float(doc["epsilon-lower-bound"]), float(doc["confidence"])
        return f"{bound:.3g} ({confidence:.0%}, m={int(doc['canaries'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _dp_cell(run: RunData) -> str:
    if not run.private:
        return "off"
    cell = f"{noise_cell(run)}, C {_fmt(run.setting('dp.max-grad-norm'))}"
    if run.setting("dp.mode") == "distributed":  # sigma is the aggregate's, added in shares under SecAgg+
        cell = f"distributed, aggregate {cell}, {_fmt(run.setting('dp.bits'))}-bit ring"
        floor = run.setting("dp.local-noise-multiplier", 0.0)
        if run.simulated and isinstance(floor, (int, float)) and floor > 0:  # deployed: each holder's own
            cell += f", local floor σ {_fmt(floor)}"
    return cell


def noise_cell(run: RunData) -> str:
    """The noise multiplier the run used: its ledgers' (min–max when holders differ); without
    ledgers the configured one, unless holders calibrated their own for a target epsilon."""
    used = run.noise_multipliers()
    if used:
        return f"σ {_fmt(used[0])}" + (f"–{_fmt(used[-1])}" if len(used) > 1 else "")
    target = run.setting("dp.target-epsilon", 0.0)  # distributed simulation resolves it to 0 and σ
    if isinstance(target, (int, float)) and target > 0:
        return f"σ set by each holder for ε {_fmt(target)}"
    return f"σ {_fmt(run.setting('dp.noise-multiplier'))}"


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _cell(key: str, row: dict[str, Any]) -> str:
    value = row.get(key)
    if key == "final-accuracy" and isinstance(value, float):
        return f"{100 * value:.2f}%"
    if key == "final-epsilon" and value is None and not row.get("private"):
        return "∞ (no DP)"
    return _fmt(value).replace("|", "\\|")


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> list[str]:
    lines = [
        "| " + " | ".join(title for title, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(key, row) for _, key in columns) + " |" for row in rows]
    return lines


def _notes(runs: Sequence[RunData]) -> list[str]:
    notes = []
    if any(r.last("accuracy") is not None for r in runs):  # only a simulation has a central test set
        notes.append(
            "- Accuracy, macro-F1 and loss are the global model's, on the server's central test set, "
            "after each round's aggregation."
        )
    if any(_federated_final(r) is not None for r in runs):
        notes.append(
            "- Federated accuracy (dotted) is scored by the holders on their own test splits and "
            "released only as sums (inside SecAgg+ unless a holder allows plaintext); round r's point "
            "scores the model round r started from, the last one the final model. Without a central "
            "test set it is the final accuracy."
        )
    notes.append(
        "- ε is each client's cumulative sample-level (ε, δ)-DP spend under its budget's accountant; "
        '"final ε" is the largest over all clients. A client sampled in fewer rounds spent less.'
    )
    if any(r.private and r.noise_multipliers() for r in runs):
        notes.append("- σ is the noise multiplier the clients' ledgers record for the run (min–max).")
    if any(not r.simulated for r in runs):
        notes.append(
            "- Deployed runs: each holder keeps its own budget, δ, ledger and device; the server "
            "sees only the ε a holder chooses to share (`share-epsilon`)."
        )
    sources = {r.name: r.epsilon_source for r in runs if r.private}
    if any(src == "ledger" for src in sources.values()):
        notes.append("- Where clients' ledgers exist, ε is read from them (`PrivacyLedger.summary()`).")
    if any(src == "metrics" for src in sources.values()):
        notes.append(
            "- Runs without ledgers show ε from the round metrics: range over the clients sampled "
            "in that round only."
        )
    if any(r.simulated for r in runs):
        notes.append(
            '- Simulated runs: round 1 includes Ray\'s start-up; "later rounds" is the median of rounds '
            "2 onwards."
        )
    return notes


def _spread_cell(spread: Spread | None, *, percent: bool) -> str:
    if spread is None:
        return "–"
    scale, spec, unit = (100.0, ".2f", "%") if percent else (1.0, ".3f", "")
    cell = f"{scale * spread.mean:{spec}}{unit}"
    if spread.count > 1:
        cell += f" ({scale * spread.low:{spec}}–{scale * spread.high:{spec}})"
    return cell


def comparison_table(rows: Sequence[ComparisonRow]) -> list[str]:
    """Markdown table: per target, federated and central accuracy and epsilon (mean (min–max))."""
    lines = [
        "| target ε | seeds | federated accuracy | federated ε (max over clients) "
        "| central accuracy | central ε |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        no_dp = "∞ (no DP)"
        federated_eps = _spread_cell(row.federated_epsilon, percent=False) if row.private else no_dp
        central_eps = _spread_cell(row.central_epsilon, percent=False)
        if not row.private and row.central_accuracy is not None:
            central_eps = no_dp
        cells = [
            f"{row.target_epsilon:g}" if row.private else no_dp,
            str(len(row.seeds)),
            _spread_cell(row.federated_accuracy, percent=True),
            federated_eps,
            _spread_cell(row.central_accuracy, percent=True),
            central_eps,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def comparison_curves(
    rows: Sequence[ComparisonRow], *, suffix: str = "", linestyle: str = "-"
) -> list[plots.Curve]:
    """Federated and central accuracy against target epsilon, as curves to plot."""
    curves = []
    for label, color, spreads in (
        ("federated", "#1565c0", [r.federated_accuracy for r in rows]),
        ("central", "#ef6c00", [r.central_accuracy for r in rows]),
    ):
        points = [(r.target_epsilon, s) for r, s in zip(rows, spreads, strict=True) if s is not None]
        if points:
            curves.append(
                plots.Curve(
                    label=label + suffix,
                    epsilons=[e for e, _ in points],
                    accuracy=[s.mean for _, s in points],
                    low=[s.low for _, s in points],
                    high=[s.high for _, s in points],
                    color=color,
                    linestyle=linestyle,
                )
            )
    return curves


def _comparison_section(rows: Sequence[ComparisonRow], out: Path) -> tuple[list[str], list[Path]]:
    if not rows:
        return [], []
    lines = [
        "## Federated vs central DP-SGD",
        "",
        *comparison_table(rows),
        "",
        "- Central: DP-SGD on the pooled training data of all clients, same model, initial weights, "
        "test set, clipping norm, learning rate and batch size, for num-rounds × local-epochs epochs; "
        "its noise is chosen for the target at the budget's δ and accountant, and its ε is what that "
        "accountant recorded. ∞ is non-private training with the same schedule.",
        "- With several seeds each cell is the mean (min–max) over seeds; a seed sets the data split, "
        "partition, sampling, initial model and noise.",
        "",
    ]
    path = out / COMPARISON_PLOT
    if not plots.plot_accuracy_vs_epsilon(
        {"final test accuracy": comparison_curves(rows)}, path, title="Federated vs central DP-SGD"
    ):
        return lines, []
    return [*lines, f"![Federated vs central DP-SGD]({COMPARISON_PLOT})", ""], [path]


def write_report(
    runs: Sequence[RunData],
    out: Path,
    *,
    title: str = "fedsys report",
    comparison: Sequence[ComparisonRow] = (),
) -> Report:
    """Write plots, ``report.md`` and ``report.json`` for ``runs`` into ``out``.

    Args:
        runs: The runs to report on.
        out: Folder for the report's files.
        title: Heading of report.md.
        comparison: A sweep's rows (:func:`fedsys.report.sweep.load_comparison`); when given,
            report.md opens with the federated-vs-central table and plot.

    Returns:
        The files written.
    """
    out.mkdir(parents=True, exist_ok=True)
    compared, written = _comparison_section(comparison, out)
    sections = []
    for filename, (heading, draw) in PLOTS.items():
        if draw(runs, out / filename):
            written.append(out / filename)
            sections += [f"## {heading}", "", f"![{heading}]({filename})", ""]
    rows = [key_numbers(r) for r in runs]
    lines = [
        f"# {title}",
        "",
        f"{len(runs)} run(s): " + ", ".join(f"`{r.path}`" for r in runs),
        "",
        *compared,
        "## Key numbers",
        "",
        *_table(rows, _UTILITY_COLUMNS),
        "",
        *_table(rows, _RUNTIME_COLUMNS),
        "",
        *_notes(runs),
        "",
        *sections,
    ]
    markdown = out / REPORT_FILE
    markdown.write_text("\n".join(lines))
    numbers = out / NUMBERS_FILE
    data: dict[str, Any] = {"runs": rows, "plots": [p.name for p in written]}
    if comparison:
        data["comparison"] = [row.to_json() for row in comparison]
    numbers.write_text(json.dumps(data, indent=2) + "\n")
    return Report(markdown=markdown, numbers=numbers, plots=tuple(written))


def _federated_final(run: RunData) -> float | None:
    """The final model's federated accuracy from summary.json (None when none was released)."""
    value = run.summary.get("final-federated-accuracy")
    return float(value) if isinstance(value, (int, float)) else None
