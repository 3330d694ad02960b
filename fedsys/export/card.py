"""``MODEL_CARD.md``: what an exported model was trained on and what privacy it carries.

Each holder's epsilon and delta are read from that holder's own privacy ledger (the record
it enforced its budget with), never from the scenario: a scenario says what was asked, the
ledger what was spent. A ledger's epsilon is its whole spend on that data set, every run
included, evaluated by its accountant over all its steps; that is an upper bound on what this
model reveals, since the model depends on a subset of those steps only. When no ledger is at
hand (a deployed run: the ledgers stay with the holders) the card says so and shows the
epsilon each holder reported to the server instead, labelled as such.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsys.config import RunConfig
from fedsys.errors import ConfigError, LedgerError

CARD_FILE = "MODEL_CARD.md"
AUDIT_FILE = "audit.json"
AUDIT_KEYS = ("epsilon", "epsilon-lower-bound", "canaries", "confidence")  # "epsilon" null: no DP


@dataclass(frozen=True)
class HolderPrivacy:
    """One holder's spend under one budget key, from its ledger (or as reported, see ``source``)."""

    holder: str
    budget_key: str
    epsilon: float
    target_delta: float | None
    accountant: str
    steps: int  # this run's DP-SGD steps at the holder
    other_runs: int  # ledger entries from other runs, also in epsilon
    source: str  # "ledger" or "reported"


@dataclass(frozen=True)
class Measurement:
    """A written model file and how it scored on the central test set (None: no test set)."""

    label: str
    size_bytes: int
    metrics: Mapping[str, float] | None


@dataclass(frozen=True)
class CardInputs:
    """Everything the card shows, gathered by :func:`fedsys.export.export_run`."""

    run_name: str
    config: RunConfig
    summary: Mapping[str, Any]
    model_file: str
    model_format: str
    parameters: int
    feature_shape: tuple[int, ...]
    num_classes: int
    test_examples: int | None
    holders: Sequence[HolderPrivacy]
    ledger_dirs: Sequence[Path]
    measurements: Sequence[Measurement]
    audit: Mapping[str, float] | None = None
    notes: Sequence[str] = field(default=())


def read_holders(
    ledger_paths: Iterable[Path], *, run_id: str, reported: Mapping[str, float], delta: float
) -> list[HolderPrivacy]:
    """Each holder's spend: from its ledger file, or (no ledgers) as it reported it to the server.

    Args:
        ledger_paths: the holders' ledger files (SQLite).
        run_id: this run's id (``summary.json``), to count its own steps.
        reported: ``epsilon-by-client`` of summary.json, used only when there is no ledger.
        delta: the scenario's ``budget.target-delta``, shown with reported values (a ledger
            carries its own).

    Raises:
        ConfigError: a ledger is unreadable or inconsistent.
    """
    from fedsys.privacy import PrivacyLedger

    paths = sorted(ledger_paths)
    if not paths:
        return [
            HolderPrivacy(key, "", float(eps), delta, "", 0, 0, "reported")
            for key, eps in sorted(reported.items(), key=lambda kv: _holder_order(kv[0]))
        ]
    holders = []
    for path in paths:
        try:
            with PrivacyLedger(path) as ledger:
                summaries = ledger.summary()
                entries = {s.budget_key: ledger.entries(s.budget_key) for s in summaries}
        except LedgerError as err:
            raise ConfigError(f"cannot read ledger {path} for the model card: {err}") from err
        if not summaries:  # never trained: nothing spent
            holders.append(HolderPrivacy(path.stem, "", 0.0, None, "", 0, 0, "ledger"))
        for s in summaries:
            own = [e for e in entries[s.budget_key] if e.run_id == run_id]
            others = len(entries[s.budget_key]) - len(own)
            steps = sum(e.steps for e in own)
            holders.append(
                HolderPrivacy(
                    path.stem, s.budget_key, s.epsilon, s.target_delta, s.accountant, steps, others, "ledger"
                )
            )
    return holders


def read_audit(path: Path) -> dict[str, float] | None:
    """``audit.json`` (written by ``fedsys audit``) if ``path`` exists, else None.

    Raises:
        ConfigError: the file is not JSON or lacks one of :data:`AUDIT_KEYS` as a number.
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is not a readable audit (JSON): {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, got {type(data).__name__}")
    audit = {}
    for key in AUDIT_KEYS:
        value = data.get(key)
        if key == "epsilon" and value is None:  # an audit of a run without DP
            value = math.inf
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: {key!r} must be a number, got {value!r}")
        audit[key] = float(value)
    if isinstance(data.get("delta"), int | float) and not isinstance(data.get("delta"), bool):
        audit["delta"] = float(data["delta"])
    return audit


def render(card: CardInputs) -> str:
    """The card as Markdown."""
    sections = [
        f"# Model card: {card.run_name}\n",
        _model_section(card),
        _data_section(card),
        _privacy_section(card),
        _secagg_section(card.config),
        _metrics_section(card),
        _limits_section(card),
    ]
    return "\n".join(sections)


def _model_section(card: CardInputs) -> str:
    cfg = card.config
    shape = "×".join(map(str, card.feature_shape))
    fix = " with Opacus' ModuleValidator.fix applied" if cfg.fix_model else ""
    lines = [
        "## Model\n",
        f"- file: `{card.model_file}` ({card.model_format})",
        f"- architecture: `{cfg.model}`{fix}; {card.parameters:,} parameters",
        f"- input: features of shape {shape} (batch first); output: logits over {card.num_classes} classes",
        f"- fedsys run `{card.summary.get('run-id', '?')}`, "
        f"{card.summary.get('rounds-completed', '?')} of {card.summary.get('rounds-planned', '?')} rounds",
    ]
    lines += [f"- {note}" for note in card.notes]
    return "\n".join(lines) + "\n"


def _data_section(card: CardInputs) -> str:
    cfg = card.config
    clients: int | str = cfg.sampling.clients_per_round or f"fraction {cfg.sampling.fraction:g}"
    if cfg.dataset != "node" and cfg.sampling.clients_per_round:
        clients = min(cfg.sampling.clients_per_round, cfg.simulation.num_clients)
    train = cfg.train
    local = f"{train.local_epochs} local epoch(s)"
    if train.local_steps:
        local = f"{train.local_steps} local steps"
    lines = ["## Data and training\n"]
    if cfg.dataset == "node":
        seen = card.summary.get("clients-seen")
        holders = f"; {seen} holder(s) seen over the run" if isinstance(seen, int) else ""
        lines.append(f"- data: each data holder's own data set (deployment); the server held none{holders}")
    else:
        lines += [
            f"- data set: `{cfg.dataset}` (simulation, seed {cfg.seed})",
            f"- partition: `{cfg.resolved_partition()}` over {cfg.simulation.num_clients} simulated holders",
        ]
    if card.test_examples is not None:
        lines.append(
            f"- central test set: {card.test_examples} held-out examples "
            f"(test-fraction {cfg.test_fraction:g})"
        )
    lines += [
        f"- rounds: {card.summary.get('rounds-completed', '?')} (planned {cfg.num_rounds}); "
        f"clients per round: {clients} (at least {cfg.sampling.min_clients})",
        f"- local training: {train.strategy}, lr {train.lr:g}, momentum {train.momentum:g}, "
        f"batch size {train.batch_size}, {local}; "
        f"server optimizer {cfg.server.optimizer} (lr {cfg.server.lr:g})",
    ]
    if card.summary.get("stop-reason"):
        lines.append(f"- stopped early: {card.summary['stop-reason']}")
    return "\n".join(lines) + "\n"


def _privacy_section(card: CardInputs) -> str:
    cfg = card.config
    if not cfg.dp.enabled:
        return (
            "## Privacy\n\nNo differential privacy: the holders trained without DP-SGD, so this model "
            "carries no formal privacy guarantee for their data.\n" + _audit_lines(card.audit)
        )
    dp = cfg.to_mapping()["dp"]
    noise = (
        f"noise calibrated by each holder to target ε = {cfg.dp.target_epsilon:g} over the run"
        if cfg.dp.target_epsilon
        else f"noise multiplier {cfg.dp.noise_multiplier:g}"
    )
    lines = [
        "## Privacy\n",
        f"- mechanism: sample-level DP-SGD (Opacus) at each holder, mode `{dp.get('mode', 'local')}`; "
        f"{noise}; max-grad-norm {cfg.dp.max_grad_norm:g}",
        "- unit of privacy: one training example of one holder; each holder keeps and enforces its own "
        f"budget (max ε {cfg.budget.max_epsilon:g} in this scenario, accountant `{cfg.budget.accountant}`)",
        "",
        _holder_table(card.holders),
        "",
        _holder_source(card.holders, card.ledger_dirs),
    ]
    if card.holders:
        top = max(h.epsilon for h in card.holders)
        lines.append(f"\nLargest ε of any holder: **{top:.6g}**.")
    return "\n".join(lines) + "\n" + _audit_lines(card.audit)


def _audit_lines(audit: Mapping[str, float] | None) -> str:
    if audit is None:
        return ""
    delta = f" (δ = {audit['delta']:g})" if "delta" in audit else ""
    claimed = "no DP" if math.isinf(audit["epsilon"]) else f"ε = {audit['epsilon']:.4g}"
    text = (
        f"\nEmpirical audit (`fedsys audit`): ε lower bound **{audit['epsilon-lower-bound']:.4g}**{delta} "
        f"at {audit['confidence']:.4g} confidence from {int(audit['canaries'])} canaries, against the "
        f"accounted {claimed}.\n"
    )
    if audit["epsilon-lower-bound"] > audit["epsilon"]:
        text += "\n**The lower bound exceeds the accounted ε: the guarantee does not hold.**\n"
    return text


def _holder_table(holders: Sequence[HolderPrivacy]) -> str:
    rows = [
        "| holder | data set (budget key) | ε | δ | accountant | DP-SGD steps in this run "
        "| entries of other runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for h in holders:
        delta = "–" if h.target_delta is None else f"{h.target_delta:g}"
        steps = "–" if h.source == "reported" else str(h.steps)
        others = "–" if h.source == "reported" else str(h.other_runs)
        rows.append(
            f"| {h.holder} | {h.budget_key or '–'} | {h.epsilon:.6g} | {delta} | {h.accountant or '–'} "
            f"| {steps} | {others} |"
        )
    return "\n".join(rows)


def _holder_source(holders: Sequence[HolderPrivacy], ledger_dirs: Sequence[Path]) -> str:
    if not holders:
        return "No ledger was found here and no holder reported an ε to the server."
    if holders[0].source == "reported":
        return (
            "ε as each holder **reported** it to the server (summary.json); the holders' ledgers were not "
            "available here (pass `--ledger PATH` for each to read them)."
        )
    where = ", ".join(f"`{d}`" for d in ledger_dirs) or "–"
    return (
        f"ε and δ read from the holders' privacy ledgers ({where}): each ledger's whole spend on its "
        "data set, evaluated by its accountant (an upper bound on this model's, if other runs are counted)."
    )


def _secagg_section(config: RunConfig) -> str:
    sa = config.secagg
    if not sa.enabled:
        return "## Secure aggregation\n\nOff: the server saw each holder's update in the clear.\n"
    default = "0 = library default"
    return (
        "\n".join(
            [
                "## Secure aggregation\n",
                f"SecAgg+ (Bell et al., CCS 2020), mode `{sa.mode}`: the server learned only the sum "
                "of updates.\n",
                f"- clip range ±{sa.clip_range:g}, {sa.quant_bits}-bit quantisation, "
                f"max weight {sa.max_weight:g}",
                f"- neighbours per client: {sa.degree or default}; "
                f"Shamir threshold: {sa.threshold or default}",
            ]
        )
        + "\n"
    )


def _metrics_section(card: CardInputs) -> str:
    s = card.summary
    lines = [
        "## Metrics (central test set)\n",
        "| model | file size (bytes) | accuracy | macro-F1 | loss |",
        "|---|---|---|---|---|",
        f"| run's final round (summary.json) | – | {_fmt(s.get('final-accuracy'))} | "
        f"{_fmt(s.get('final-macro-f1'))} | {_fmt(s.get('final-loss'))} |",
    ]
    for m in card.measurements:
        values = m.metrics or {}
        lines.append(
            f"| {m.label} | {m.size_bytes:,} | {_fmt(values.get('accuracy'))} | "
            f"{_fmt(values.get('macro-f1'))} | {_fmt(values.get('loss'))} |"
        )
    if card.test_examples is None:
        lines.append(
            "\nNo central test set (a deployed run's server holds no data): exported files not scored."
        )
    return "\n".join(lines) + "\n"


def _limits_section(card: CardInputs) -> str:
    lines = [
        "## Limits\n",
        "- ε covers the model's weights and anything computed from them; it does not cover choices made "
        "by looking at private data outside DP-SGD (hyper-parameters, the model architecture).",
        "- The central test set is the server's own held-out data; its metrics are not private.",
    ]
    if card.config.dp.enabled and card.audit is None:
        lines.append("- No empirical audit was found (`audit.json`); ε is the accountant's upper bound only.")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    return f"{value:.4f}"


def _holder_order(key: str) -> tuple[int, str]:
    return (int(key), key) if key.isdigit() else (1 << 62, key)
