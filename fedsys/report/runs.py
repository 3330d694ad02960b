"""Reading a run directory back: its config, per-round metrics, summary and client ledgers.

The config is read as plain TOML rather than through :class:`~fedsys.config.RunConfig`, so
run directories written by older (or newer) versions still load for reporting.
Epsilon and the noise multipliers used come from the simulated clients' own privacy ledgers
when the run has them (``ledgers/client-NNNNN.sqlite``); otherwise epsilon comes from the
``epsilon-min/median/max`` the coordinator recorded per round from clients' replies. A deployed
run's directory holds only what the server knows: each holder's budget, noise calibration and
device are its own, and the report says so rather than showing the scenario's defaults.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedsys.errors import ConfigError, LedgerError
from fedsys.results import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, read_metrics

EpsilonSource = Literal["ledger", "metrics", "none"]
LEDGER_GLOB = "client-*.sqlite"


@dataclass(frozen=True)
class ClientSpend:
    """One client's cumulative epsilon after each round of a run (from its ledger).

    ``epsilons[r]`` is the epsilon after round ``r`` (index 0 = before the run started);
    it stays flat in rounds the client was not sampled. ``final`` is the ledger's own
    summary: the client's whole spend on its data set, over every run it took part in.
    ``noise_multipliers`` are those of this run's entries (distributed DP: the aggregate's
    Gaussian-equivalent multiplier the ledger records); ``target_delta`` is the ledger summary's.
    """

    client: str
    epsilons: tuple[float, ...]
    final: float
    noise_multipliers: tuple[float, ...] = ()
    target_delta: float | None = None


@dataclass(frozen=True)
class RunData:
    """Everything a report needs from one run directory."""

    path: Path
    name: str
    config: Mapping[str, Any]
    records: list[dict[str, Any]]
    summary: Mapping[str, Any]
    clients: tuple[ClientSpend, ...] = field(default=())

    def setting(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted key (``dp.noise-multiplier``), or ``default``."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def private(self) -> bool:
        """Whether clients trained with DP-SGD."""
        return bool(self.setting("dp.enabled", False))

    @property
    def rounds(self) -> list[int]:
        """Round numbers in order."""
        return [int(r["round"]) for r in self.records]

    @property
    def simulated(self) -> bool:
        """Whether fedsys simulated the data holders (so the scenario's budget and data were theirs).

        From summary.json's ``simulated``; a run directory without it is a deployed run exactly
        when its data set is the holders' own (``dataset = "node"``).
        """
        recorded = self.summary.get("simulated")
        if isinstance(recorded, bool):
            return recorded
        return bool(self.setting("dataset") != "node")

    def rounds_with_status(self, status: str) -> int:
        """How many recorded rounds ended with ``status`` (``ok``: an aggregate was released)."""
        return sum(r.get("status", "ok") == status for r in self.records)

    def clients_seen(self) -> int | None:
        """Clients the run found: summary.json's ``clients-seen``, else the simulated population."""
        seen = self.summary.get("clients-seen")
        if isinstance(seen, int) and not isinstance(seen, bool) and seen > 0:
            return seen
        count = self.setting("simulation.num-clients") if self.simulated else None
        return count if isinstance(count, int) else None

    def noise_multipliers(self) -> tuple[float, ...]:
        """The distinct noise multipliers this run's ledger entries record, smallest first."""
        return tuple(sorted({m for c in self.clients for m in c.noise_multipliers}))

    def target_deltas(self) -> tuple[float, ...]:
        """The distinct deltas the ledgers evaluate epsilon at (empty without ledgers)."""
        return tuple(sorted({c.target_delta for c in self.clients if c.target_delta is not None}))

    @property
    def epsilon_source(self) -> EpsilonSource:
        """Where this run's epsilon comes from."""
        if self.clients:
            return "ledger"
        if any(_number(r.get("epsilon-max")) is not None for r in self.records):
            return "metrics"
        return "none"

    def last(self, key: str) -> float | None:
        """The last round's finite value of ``key``, or None."""
        for record in reversed(self.records):
            value = _number(record.get(key))
            if value is not None:
                return value
        return None

    def series(self, key: str) -> list[float]:
        """``key`` per round (NaN where a round lacks it)."""
        values = (_number(r.get(key)) for r in self.records)
        return [math.nan if v is None else v for v in values]

    def final_epsilon(self) -> float | None:
        """Largest cumulative epsilon of any client (None for a non-private run).

        From the ledgers this is ``max(PrivacyLedger(path).summary().epsilon)`` over the
        clients; without ledgers, the largest ``epsilon-max`` any round recorded.
        """
        if self.clients:
            return max(c.final for c in self.clients)
        values = [v for v in self.series("epsilon-max") if not math.isnan(v)]
        return max(values) if values else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def load_run(path: Path, *, name: str | None = None) -> RunData:
    """Load a run directory written by ``fedsys simulate`` (or a sweep).

    Args:
        path: The run directory (holds ``metrics.jsonl``).
        name: Label for plots and tables; defaults to the directory name.

    Raises:
        ConfigError: ``path`` is not a run directory or its files are unreadable.
    """
    if not (path / METRICS_FILE).is_file():
        raise ConfigError(f"{path} is not a run directory: it has no {METRICS_FILE}")
    try:
        records = read_metrics(path)
        config = _read_toml(path / CONFIG_FILE)
        summary = _read_json(path / SUMMARY_FILE)
    except (OSError, ValueError) as err:
        raise ConfigError(f"run directory {path} is unreadable: {err}") from err
    run = RunData(path=path, name=name or path.name, config=config, records=records, summary=summary)
    ledger_dir = _ledger_dir(run)
    if ledger_dir is None:
        return run
    clients = read_ledgers(ledger_dir, run_id=str(summary.get("run-id", "")), rounds=run.rounds)
    return RunData(path=path, name=run.name, config=config, records=records, summary=summary, clients=clients)


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open("rb") as fh:
        return tomllib.load(fh)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def _ledger_dir(run: RunData) -> Path | None:
    """The run's own ``ledgers/`` first (run dirs get moved), then its configured ledger-dir."""
    candidates = [run.path / "ledgers"]
    configured = run.setting("ledger-dir", "")
    if configured:
        candidates.append(Path(str(configured)))
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob(LEDGER_GLOB)):
            return candidate
    return None


def read_ledgers(ledger_dir: Path, *, run_id: str, rounds: Sequence[int]) -> tuple[ClientSpend, ...]:
    """Per-client epsilon after each round, from the clients' SQLite ledgers.

    Args:
        ledger_dir: Folder of ``client-NNNNN.sqlite`` files.
        run_id: Only entries of this run shape the per-round curve ("" = all entries).
        rounds: The run's round numbers.

    Raises:
        ConfigError: a ledger is unreadable or corrupt.
    """
    from fedsys.privacy import PrivacyLedger

    spends = []
    for path in sorted(ledger_dir.glob(LEDGER_GLOB)):
        try:
            with PrivacyLedger(path) as ledger:
                summaries = ledger.summary()
                entries = [e for s in summaries for e in ledger.entries(s.budget_key)]
        except LedgerError as err:
            raise ConfigError(f"cannot report on ledger {path}: {err}") from err
        if not summaries:
            continue
        own = sorted((e for e in entries if not run_id or e.run_id == run_id), key=lambda e: e.id)
        start = own[0].epsilon_before if own else 0.0
        curve = [start]
        for rnd in rounds:
            spent = [e.epsilon_after for e in own if e.round <= rnd]
            curve.append(spent[-1] if spent else start)
        spends.append(
            ClientSpend(
                client=path.stem,
                epsilons=tuple(curve),
                final=max(s.epsilon for s in summaries),
                noise_multipliers=tuple(sorted({e.noise_multiplier for e in own if e.steps > 0})),
                target_delta=max(s.target_delta for s in summaries),
            )
        )
    return tuple(spends)


def load_runs(paths: Sequence[Path]) -> list[RunData]:
    """Load several run directories; clashing directory names get their parent as prefix."""
    names = [p.resolve().name for p in paths]
    runs = []
    for path, name in zip(paths, names, strict=True):
        label = name if names.count(name) == 1 else f"{path.resolve().parent.name}/{name}"
        runs.append(load_run(path, name=label))
    return runs
