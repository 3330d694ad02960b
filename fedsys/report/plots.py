"""PNG plots of one or several runs, drawn with matplotlib's Agg canvas (no pyplot, no display).

Each function writes one file and returns whether it had anything to draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

from fedsys.report.runs import RunData

MAX_CLIENT_LINES = 20
MAX_PANELS = 12
_LABELLED_CLIENTS = 6
_LOG_SCALE_RATIO = 30.0  # a loss that spans more than this (a diverged run) is drawn on a log axis
_DPI = 110
_PARTICIPATION = (
    ("clients-succeeded", "succeeded", "#2e7d32"),
    ("clients-failed", "failed", "#c62828"),
    ("clients-declined", "declined (budget or policy)", "#f9a825"),
)
TOTAL_KEYS = tuple(key for key, _, _ in _PARTICIPATION)


def _figure(width: float = 7.0, height: float = 4.2) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _panels(count: int, title: str) -> tuple[Figure, list[Axes]]:
    """A grid of up to three panels per row; unused cells are hidden."""
    cols = min(count, 3)
    rows = math.ceil(count / cols)
    fig = _figure(7.0 if cols == 1 else 4.6 * cols, 4.2 if rows == 1 and cols == 1 else 3.6 * rows)
    grid = fig.subplots(rows, cols, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[count:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:count]


def _rounds_axis(ax: Axes) -> None:
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


def plot_accuracy(runs: Sequence[RunData], path: Path) -> bool:
    """Central test accuracy (and macro-F1, dashed, for a single run) per round, and federated
    accuracy (dotted: the holders' own test splits, released only as sums) where a run has it."""
    runs = [r for r in runs if r.last("accuracy") is not None or _federated_points(r)[0]]
    if not runs:
        return False
    fig = _figure()
    ax = fig.subplots()
    for run in runs:
        if run.last("accuracy") is not None:
            (line,) = ax.plot(run.rounds, [100 * v for v in run.series("accuracy")], marker="o", ms=3)
            line.set_label(run.name if len(runs) > 1 else "accuracy")
            if len(runs) == 1:
                ax.plot(run.rounds, [100 * v for v in run.series("macro-f1")], "--", label="macro-F1")
        x, y = _federated_points(run)
        if x:
            name = f"{run.name} (federated)" if len(runs) > 1 else "federated accuracy"
            ax.plot(x, [100 * v for v in y], ":", marker="s", ms=3, label=name)
    central = any(r.last("accuracy") is not None for r in runs)
    title = "Global model on the central test set" if central else "Global model on the holders' test splits"
    epsilon = runs[0].final_epsilon() if len(runs) == 1 and runs[0].private else None
    if epsilon is not None:
        title += f" (DP-SGD, final ε = {epsilon:.2f})"
    ax.set_title(title)
    ax.set_ylabel("accuracy / macro-F1 (%)" if len(runs) == 1 else "accuracy (%)")
    ax.set_ylim(0, 100)
    _rounds_axis(ax)
    ax.legend(loc="best", fontsize="small")
    _save(fig, path)
    return True


def _federated_points(run: RunData) -> tuple[list[int], list[float]]:
    """Federated accuracy against the round whose model it scored: round r's record scores the
    model round r started from (released after round r - 1); summary.json has the final model's."""
    points = [(rnd - 1, v) for rnd, v in zip(run.rounds, run.series("federated-accuracy"), strict=True)]
    final = run.summary.get("final-federated-accuracy")
    if isinstance(final, (int, float)) and run.rounds:
        points.append((run.rounds[-1], float(final)))
    kept = [(x, y) for x, y in points if y == y]  # NaN: a round without released sums
    return [x for x, _ in kept], [y for _, y in kept]


def plot_loss(runs: Sequence[RunData], path: Path) -> bool:
    """Central test loss per round."""
    runs = [r for r in runs if r.last("loss") is not None]
    if not runs:
        return False
    fig = _figure()
    ax = fig.subplots()
    for run in runs:
        ax.plot(run.rounds, run.series("loss"), marker="o", ms=3, label=run.name)
    positive = [v for run in runs for v in run.series("loss") if v > 0]
    if positive and max(positive) / min(positive) > _LOG_SCALE_RATIO:
        ax.set_yscale("log")
    ax.set_title("Global model's loss on the central test set")
    ax.set_ylabel("cross-entropy loss (nats per example)")
    _rounds_axis(ax)
    ax.legend(loc="best", fontsize="small")
    _save(fig, path)
    return True


def plot_epsilon(runs: Sequence[RunData], path: Path) -> bool:
    """Each client's cumulative epsilon per round, one panel per private run."""
    private = [r for r in runs if r.epsilon_source != "none"][:MAX_PANELS]
    if not private:
        return False
    fig, axes = _panels(len(private), "Privacy spent: cumulative ε per client")
    for ax, run in zip(axes, private, strict=True):
        if run.clients:
            _epsilon_from_ledgers(ax, run)
        else:
            _epsilon_from_metrics(ax, run)
        # a deployed run's budget and delta are each holder's own: the server's config has defaults
        budget = run.setting("budget.max-epsilon") if run.simulated else None
        if isinstance(budget, (int, float)) and math.isfinite(budget):
            ax.axhline(budget, color="#c62828", ls="--", lw=1, label=f"budget max ε = {budget:g}")
        deltas = run.target_deltas() or ((run.setting("budget.target-delta"),) if run.simulated else ())
        delta = deltas[0] if len(deltas) == 1 else None
        ax.set_ylabel(f"ε (δ = {delta:g})" if isinstance(delta, (int, float)) else "ε (holders' δ)")
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, max(run.rounds, default=1))
        _rounds_axis(ax)
        ax.legend(loc="upper left", fontsize="x-small")
    _save(fig, path)
    return True


def _epsilon_from_ledgers(ax: Axes, run: RunData) -> None:
    xs = [0, *run.rounds]
    clients = sorted(run.clients, key=lambda c: c.final, reverse=True)
    lows = [min(c.epsilons[i] for c in clients) for i in range(len(xs))]
    highs = [max(c.epsilons[i] for c in clients) for i in range(len(xs))]
    ax.fill_between(xs, lows, highs, color="#1565c0", alpha=0.12, label="range over clients")
    shown = clients[:MAX_CLIENT_LINES]
    for i, client in enumerate(shown):
        label = (
            client.client if len(shown) <= _LABELLED_CLIENTS else "one line per client" if i == 0 else None
        )
        ax.plot(xs, client.epsilons, lw=1, alpha=0.8, label=label)
    more = f", {len(shown)} most spent shown" if len(clients) > len(shown) else ""
    ax.set_title(f"{run.name}: {len(clients)} client ledgers{more}", fontsize="medium")


def _epsilon_from_metrics(ax: Axes, run: RunData) -> None:
    xs = run.rounds
    ax.fill_between(
        xs,
        run.series("epsilon-min"),
        run.series("epsilon-max"),
        color="#1565c0",
        alpha=0.2,
        label="min-max over sampled clients",
    )
    ax.plot(xs, run.series("epsilon-median"), marker="o", ms=3, color="#1565c0", label="median")
    ax.set_title(f"{run.name}: from round metrics (no ledgers)", fontsize="medium")


def plot_participation(runs: Sequence[RunData], path: Path) -> bool:
    """Stacked bars per round: clients that succeeded, failed or declined."""
    runs = [r for r in runs if r.records][:MAX_PANELS]
    if not runs:
        return False
    fig, axes = _panels(len(runs), "Participation: sampled clients per round")
    for ax, run in zip(axes, runs, strict=True):
        bottom = [0.0] * len(run.records)
        for key, label, color in _PARTICIPATION:
            counts = [float(r.get(key) or 0) for r in run.records]
            ax.bar(run.rounds, counts, bottom=bottom, color=color, label=label, width=0.8)
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
        ax.set_title(run.name, fontsize="medium")
        ax.set_ylabel("clients")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, max(bottom, default=1) * 1.25 or 1)
        _rounds_axis(ax)
        ax.legend(loc="upper right", fontsize="x-small", ncols=3)
    _save(fig, path)
    return True


def plot_privacy_utility(runs: Sequence[RunData], path: Path) -> bool:
    """Final accuracy against final epsilon (largest over clients), one point per run."""
    points = []
    for run in runs:
        epsilon, accuracy = run.final_epsilon(), run.last("accuracy")
        if run.private and epsilon is not None and accuracy is not None:
            points.append((epsilon, 100 * accuracy, run.name))
    baselines = [(100 * a, r.name) for r in runs if not r.private and (a := r.last("accuracy")) is not None]
    if len(points) + len(baselines) < 2 or not points:
        return False
    points.sort()
    fig = _figure()
    ax = fig.subplots()
    ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="#1565c0", label="DP-SGD runs")
    for epsilon, accuracy, name in points:
        ax.annotate(name, (epsilon, accuracy), textcoords="offset points", xytext=(4, -12), fontsize="small")
    for i, (accuracy, name) in enumerate(baselines):
        color = ("#424242", "#6d4c41", "#00695c")[i % 3]
        ax.axhline(accuracy, ls="--", color=color, label=f"{name} (no DP): {accuracy:.1f}%")
    low, high = min(p[0] for p in points), max(p[0] for p in points)
    if high / max(low, 1e-12) > 10:
        ax.set_xscale("log")
        ax.set_xlim(low / 1.6, high * 1.6)
    else:
        ax.set_xlim(0, high * 1.2 or 1)
    ax.set_xticks([p[0] for p in points], [f"{p[0]:.3g}" for p in points])
    ax.xaxis.set_minor_locator(NullLocator())
    lowest = min([p[1] for p in points] + [b[0] for b in baselines])
    ax.set_title("Privacy-utility trade-off (final round)")
    ax.set_xlabel("final ε, largest over clients (δ as configured)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_ylim(max(0.0, 10 * math.floor(lowest / 10) - 10), 100)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)
    return True


@dataclass(frozen=True)
class Curve:
    """Final accuracy against target epsilon, one point per target (``inf`` = no DP).

    ``accuracy``, ``low`` and ``high`` are fractions in [0, 1]: the mean over seeds and its
    range, drawn as error bars.
    """

    label: str
    epsilons: Sequence[float]
    accuracy: Sequence[float]
    low: Sequence[float]
    high: Sequence[float]
    color: str = "#1565c0"
    linestyle: str = "-"


def plot_accuracy_vs_epsilon(
    panels: Mapping[str, Sequence[Curve]], path: Path, *, title: str, xlabel: str = "target ε"
) -> bool:
    """One panel per entry, each with its curves; ``inf`` sits at the right edge, marked ∞."""
    panels = {name: [c for c in curves if c.epsilons] for name, curves in panels.items()}
    panels = {name: curves for name, curves in panels.items() if curves}
    if not panels:
        return False
    finite = sorted({e for cs in panels.values() for c in cs for e in c.epsilons if math.isfinite(e)})
    inf_x = 3 * finite[-1] if finite else 1.0  # the baseline drawn right of the largest target
    fig, axes = _panels(len(panels), title)
    for ax, (name, curves) in zip(axes, panels.items(), strict=True):
        for curve in curves:
            _draw_curve(ax, curve, inf_x)
        lowest = min(100 * v for c in curves for v in c.low)
        ticks = [*finite, inf_x] if any(math.isinf(e) for c in curves for e in c.epsilons) else finite
        if len(ticks) > 1:
            ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" if t != inf_x else "∞\n(no DP)" for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("final test accuracy (%)")
        ax.set_ylim(max(0.0, 10 * math.floor(lowest / 10) - 10), 100)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="x-small")
    _save(fig, path)
    return True


def _draw_curve(ax: Axes, curve: Curve, inf_x: float) -> None:
    """Finite targets joined by a line; the no-DP point (at ``inf_x``) on its own, same colour."""
    points = sorted(
        (inf_x if math.isinf(e) else e, 100 * a, 100 * lo, 100 * hi)
        for e, a, lo, hi in zip(curve.epsilons, curve.accuracy, curve.low, curve.high, strict=True)
    )
    groups = [
        ([p for p in points if p[0] != inf_x], curve.linestyle),
        ([p for p in points if p[0] == inf_x], "none"),
    ]
    label: str | None = curve.label
    for group, linestyle in groups:
        if not group:
            continue
        ax.errorbar(
            [p[0] for p in group],
            [p[1] for p in group],
            yerr=[[p[1] - p[2] for p in group], [p[3] - p[1] for p in group]],
            marker="o",
            ms=4,
            capsize=3,
            color=curve.color,
            linestyle=linestyle,
            label=label,
        )
        label = None  # one legend entry per curve
