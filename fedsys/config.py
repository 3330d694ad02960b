"""Run configuration: the one place that reads run-config keys and validates them.

A scenario is a TOML file with top-level keys and sections (``[train]``, ``[dp]``, ...).
Flower passes run config as a flat mapping with dotted keys (``dp.noise-multiplier``);
both shapes load into the same frozen :class:`RunConfig`. Keys are kebab-case, as in
Flower's run config. An unknown key or a value of the wrong type is a :class:`ConfigError`
that names the key and echoes the value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from fedsys.errors import ConfigError

StrategyName = Literal["fedavg", "fedprox"]
ServerOptimizerName = Literal["sgd", "momentum", "adagrad", "adam", "yogi"]
ServerAverage = Literal["none", "ema"]
Accountant = Literal["rdp", "prv"]
GradSampleMode = Literal["auto", "hooks", "ghost"]
BudgetPolicy = Literal["refuse", "truncate"]
DeviceName = Literal["auto", "cpu", "cuda"]
DPMode = Literal["local", "distributed"]
DPLevel = Literal["sample", "client"]
SecAggMode = Literal["semi-honest", "malicious"]

_PARTITION_RE = re.compile(r"^(iid|natural|dirichlet:(?P<alpha>[0-9.eE+-]+)|shards:(?P<k>\d+))$")
_BUILTIN_DATASETS = ("digits", "mnist-5k", "breast-cancer")
MAX_TEXT_LENGTH = 65_536
MODEL_REFERENCE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class FeatureRange:
    """A declared, public range of a data file's feature values; never computed from the data.

    ``none``: the values are used as given. ``uniform``: every feature lies in
    ``[low, high]``. ``table``: a CSV file with columns ``column,low,high``, one row per
    feature column (it also names and orders the feature columns). Values are clipped to
    the range and mapped to [-1, 1], one record at a time (:mod:`fedsys.data.scaling`).
    """

    kind: Literal["none", "uniform", "table"]
    low: float = -1.0
    high: float = 1.0
    table: str = ""


def parse_feature_range(text: str, *, key: str) -> FeatureRange | None:
    """Parse ``none``, ``LO,HI`` or a ``.csv`` table path; ``None`` when nothing is declared.

    Raises:
        ConfigError: anything else, or ``LO,HI`` that is not finite with ``LO < HI``.
    """
    text = text.strip()
    if not text:
        return None
    if text == "none":
        return FeatureRange("none")
    if text.lower().endswith(".csv"):
        return FeatureRange("table", table=text)
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError as err:
        raise ConfigError(
            f'{key} must be "none", "LO,HI" or a .csv table of column,low,high, got {text!r}'
        ) from err
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"{key} needs finite LO < HI, got {text!r}")
    return FeatureRange("uniform", low=low, high=high)


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyper-parameters sent to clients each round."""

    lr: float = 0.1
    momentum: float = 0.9
    batch_size: int = 32
    local_epochs: int = 3
    local_steps: int = 0  # 0 = use local_epochs
    strategy: StrategyName = "fedavg"
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        _require(self.lr > 0 and math.isfinite(self.lr), "train.lr", self.lr, "must be > 0")
        _require(0 <= self.momentum < 1, "train.momentum", self.momentum, "must be in [0, 1)")
        _require(self.batch_size >= 1, "train.batch-size", self.batch_size, "must be >= 1")
        _require(self.local_epochs >= 1, "train.local-epochs", self.local_epochs, "must be >= 1")
        _require(self.local_steps >= 0, "train.local-steps", self.local_steps, "must be >= 0")
        _require(self.proximal_mu >= 0, "train.proximal-mu", self.proximal_mu, "must be >= 0")
        if self.strategy == "fedprox" and self.proximal_mu == 0:
            raise ConfigError("train.strategy 'fedprox' needs train.proximal-mu > 0, got 0")


@dataclass(frozen=True)
class ServerConfig:
    """The server optimizer applied to each round's aggregated delta (``[server]``).

    ``sgd`` with ``lr`` 1 is plain FedAvg. ``momentum`` is FedAvgM (Hsu et al. 2019); ``adagrad``,
    ``adam`` and ``yogi`` are FedAdagrad/FedAdam/FedYogi (Reddi et al., ICLR 2021, Algorithm 2).
    ``momentum`` is FedAvgM's only; ``beta1``, ``beta2`` and ``tau`` (the degree of adaptivity)
    are the adaptive optimizers' (``adagrad`` uses no ``beta2``). The equations are in
    :mod:`fedsys.strategy.server_optimizer`. ``average = "ema"`` releases (evaluates, saves) an
    exponential moving average of the iterates with ``ema-decay`` instead of the last one
    (:mod:`fedsys.strategy.averaging`); holders keep training from the iterate.
    """

    optimizer: ServerOptimizerName = "sgd"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    # "ema": the released model is an exponential moving average of the global iterates
    # (fedsys.strategy.averaging), computed by the server from released aggregates only
    average: ServerAverage = "none"
    ema_decay: float = 0.9

    def __post_init__(self) -> None:
        _require(self.lr > 0 and math.isfinite(self.lr), "server.lr", self.lr, "must be a finite number > 0")
        _require(0 < self.ema_decay < 1, "server.ema-decay", self.ema_decay, "must be in (0, 1)")
        _require(0 <= self.momentum < 1, "server.momentum", self.momentum, "must be in [0, 1)")
        _require(0 <= self.beta1 < 1, "server.beta1", self.beta1, "must be in [0, 1)")
        _require(0 <= self.beta2 < 1, "server.beta2", self.beta2, "must be in [0, 1)")
        _require(
            self.tau > 0 and math.isfinite(self.tau), "server.tau", self.tau, "must be a finite number > 0"
        )


@dataclass(frozen=True)
class SamplingConfig:
    """How many clients take part in each round."""

    clients_per_round: int = 0  # 0 = use fraction
    fraction: float = 1.0
    min_clients: int = 2
    round_timeout: float = 600.0  # seconds to wait for replies

    def __post_init__(self) -> None:
        _require(0 < self.fraction <= 1, "sampling.fraction", self.fraction, "must be in (0, 1]")
        _require(
            self.clients_per_round >= 0, "sampling.clients-per-round", self.clients_per_round, "must be >= 0"
        )
        _require(self.min_clients >= 1, "sampling.min-clients", self.min_clients, "must be >= 1")
        _require(self.round_timeout > 0, "sampling.round-timeout", self.round_timeout, "must be > 0")


@dataclass(frozen=True)
class DPConfig:
    """Sample-level DP-SGD requested by the server (the budget is the client's own)."""

    enabled: bool = True
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    accountant: Accountant = "rdp"
    grad_sample_mode: GradSampleMode = "auto"
    # > 0: each client calibrates its noise once, for the whole run's schedule, from its own
    # sampling rate, so that num-rounds rounds reach exactly this epsilon (noise-multiplier unused)
    target_epsilon: float = 0.0
    # "local": each holder adds all of its DP-SGD noise itself (DP-FedAvg over local DP-SGD).
    # "distributed": DP-FedSGD inside SecAgg+ -- each holder adds a Skellam share of the noise
    # in the integer ring, the aggregate carries the full noise (fedsys.privacy.distributed);
    # noise-multiplier (or target-epsilon) then describes the aggregate's noise.
    mode: DPMode = "local"
    bits: int = 16  # distributed mode: ring bits per coordinate of the secure sum
    # distributed mode: "sample" = DP-FedSGD, each record's gradient clipped to max-grad-norm;
    # "client" = DP-FedAvg, each holder trains without DP and clips its whole update to
    # max-grad-norm (client-level DP: a neighbouring data set differs by one holder's data)
    level: DPLevel = "sample"
    # distributed mode: a floor on the noise each holder adds by itself, in noise-multiplier units
    # (standard deviation local-noise-multiplier x Delta_2 per coordinate), so that one holder's
    # vector alone stays DP if secure aggregation fails; 0 = no floor. Simulation: every virtual
    # holder applies it. Deployment: the server uses it only to size the ring; each holder's own
    # node config (ddp-local-noise-multiplier) decides what it adds.
    local_noise_multiplier: float = 0.0

    def __post_init__(self) -> None:
        _require(
            self.local_noise_multiplier >= 0 and math.isfinite(self.local_noise_multiplier),
            "dp.local-noise-multiplier",
            self.local_noise_multiplier,
            "must be a finite number >= 0 (0 = no local floor)",
        )
        _require(
            self.local_noise_multiplier == 0 or self.mode == "distributed",
            "dp.local-noise-multiplier",
            self.local_noise_multiplier,
            'is a floor for dp.mode = "distributed" (in local mode each holder adds all of its noise)',
        )
        _require(
            self.mode in ("local", "distributed"),
            "dp.mode",
            self.mode,
            'must be "local" or "distributed"',
        )
        _require(8 <= self.bits <= 62, "dp.bits", self.bits, "must be in [8, 62]")
        _require(self.level in ("sample", "client"), "dp.level", self.level, 'must be "sample" or "client"')
        _require(
            self.level == "sample" or self.mode == "distributed",
            "dp.level",
            self.level,
            'client-level DP exists in dp.mode = "distributed" only',
        )
        _require(
            self.target_epsilon >= 0 and math.isfinite(self.target_epsilon),
            "dp.target-epsilon",
            self.target_epsilon,
            "must be a finite number >= 0 (0 = use dp.noise-multiplier)",
        )
        _require(
            self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier),
            "dp.noise-multiplier",
            self.noise_multiplier,
            "must be >= 0",
        )
        _require(
            self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm),
            "dp.max-grad-norm",
            self.max_grad_norm,
            "must be > 0",
        )


@dataclass(frozen=True)
class BudgetConfig:
    """A data holder's own privacy budget (simulation stands in for every data holder)."""

    max_epsilon: float = 8.0
    target_delta: float = 1e-5
    policy: BudgetPolicy = "refuse"
    accountant: Accountant = "rdp"  # how the holder counts its own spending, whatever the server asks

    def __post_init__(self) -> None:
        _require(self.max_epsilon > 0, "budget.max-epsilon", self.max_epsilon, "must be > 0")
        _require(0 < self.target_delta < 1, "budget.target-delta", self.target_delta, "must be in (0, 1)")


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation (SecAgg+) parameters."""

    enabled: bool = True
    clip_range: float = 8.0
    quant_bits: int = 24
    max_weight: float = 10_000.0  # public bound on a client's example count (weights are capped)
    degree: int = 0  # neighbours per client; 0 = library default (complete graph up to 20 clients)
    threshold: int = 0  # Shamir threshold t; 0 = library default (a majority of share holders)
    stage_timeout: float = 600.0
    # "malicious": signed keys and a ConsistencyCheck round against an actively malicious server
    # (holders need identity keys; fedsys.secagg.consistency). "semi-honest" trusts the server to
    # follow the protocol; it stays the default because malicious mode forces the complete graph.
    mode: SecAggMode = "semi-honest"

    def __post_init__(self) -> None:
        _require(
            self.mode != "malicious" or self.degree == 0,
            "secagg.degree",
            self.degree,
            'must be 0 with secagg.mode = "malicious" (it needs the complete graph)',
        )
        _require(
            self.clip_range > 0 and math.isfinite(self.clip_range),
            "secagg.clip-range",
            self.clip_range,
            "must be a finite number > 0",
        )
        _require(8 <= self.quant_bits <= 40, "secagg.quant-bits", self.quant_bits, "must be in [8, 40]")
        _require(
            self.max_weight >= 1 and math.isfinite(self.max_weight),
            "secagg.max-weight",
            self.max_weight,
            "must be a finite number >= 1",
        )
        _require(self.degree >= 0, "secagg.degree", self.degree, "must be >= 0")
        _require(self.threshold >= 0, "secagg.threshold", self.threshold, "must be >= 0")
        _require(self.stage_timeout > 0, "secagg.stage-timeout", self.stage_timeout, "must be > 0")


@dataclass(frozen=True)
class EvaluationConfig:
    """Federated evaluation (:mod:`fedsys.evaluation`): holders score each model they are sent on
    their held-out split and release only sums (inside SecAgg+ unless their policy allows plaintext)."""

    federated: bool = True
    loss_bound: float = 10.0  # public clip of one example's cross-entropy in the released loss sum
    # > 0: each holder adds Gaussian noise (this times the sums' L2 sensitivity) to its sums and
    # charges one Gaussian release (q = 1) to its ledger; 0: sums released exactly
    noise_multiplier: float = 0.0

    def __post_init__(self) -> None:
        _require(
            self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier),
            "evaluation.noise-multiplier",
            self.noise_multiplier,
            "must be a finite number >= 0",
        )
        _require(
            self.loss_bound > 0 and math.isfinite(self.loss_bound),
            "evaluation.loss-bound",
            self.loss_bound,
            "must be a finite number > 0",
        )


@dataclass(frozen=True)
class SimulationConfig:
    """Virtual-client settings for Flower's simulation engine."""

    num_clients: int = 10
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    ray_address: str = ""

    def __post_init__(self) -> None:
        _require(self.num_clients >= 1, "simulation.num-clients", self.num_clients, "must be >= 1")
        _require(self.num_cpus > 0, "simulation.num-cpus", self.num_cpus, "must be > 0")
        _require(self.num_gpus >= 0, "simulation.num-gpus", self.num_gpus, "must be >= 0")


@dataclass(frozen=True)
class TextConfig:
    """A text data file (``[text]``): with ``column`` set, ``dataset`` (a CSV or Parquet file) is
    read as texts, each encoded on its own into ``max-length`` token ids by a public tokenizer,
    ``bytes`` (UTF-8 bytes) or a tokenizer JSON file; never a vocabulary built from the records
    (:mod:`fedsys.data.text`). Token ids are not scaled, so ``feature-range`` does not apply.
    """

    column: str = ""
    max_length: int = 128
    tokenizer: str = "bytes"

    def __post_init__(self) -> None:
        _require(
            1 <= self.max_length <= MAX_TEXT_LENGTH,
            "text.max-length",
            self.max_length,
            f"must be in [1, {MAX_TEXT_LENGTH}]",
        )
        _require(bool(self.tokenizer), "text.tokenizer", self.tokenizer, 'must be "bytes" or a .json file')


def is_dataset_loader(dataset: str) -> bool:
    """Whether ``dataset`` names a user loader (``package.module:loader``) rather than a file."""
    return not dataset.startswith("synthetic") and bool(MODEL_REFERENCE_RE.match(dataset))


def _check_labels(config: RunConfig) -> None:
    labels = config.labels
    if not labels:
        return
    if len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels):
        raise ConfigError(f"labels must be two or more distinct, non-empty strings, got {list(labels)!r}")
    if config.num_classes and config.num_classes != len(labels):
        raise ConfigError(f"num-classes is {config.num_classes} but labels declares {len(labels)} labels")
    data_file = Path(config.dataset).suffix.lower() in {".csv", ".parquet", ".pq", ".npz"}
    if not data_file or is_dataset_loader(config.dataset):
        raise ConfigError(
            f"labels applies to a .csv, .parquet or .npz dataset file, got dataset {config.dataset!r}"
        )


def _check_dataset(config: RunConfig) -> None:
    text, dataset = config.text, config.dataset
    if is_dataset_loader(dataset) and config.feature_range.strip().lower().endswith(".csv"):
        raise ConfigError(
            f"a feature-range table names file columns; a loader's features have none: give "
            f'"LO,HI" or "none", got {config.feature_range!r}'
        )
    if not text.column:
        return
    if Path(dataset).suffix.lower() not in {".csv", ".parquet", ".pq"} or is_dataset_loader(dataset):
        raise ConfigError(f"text.column applies to a .csv or .parquet dataset file, got dataset {dataset!r}")
    if config.feature_range:
        raise ConfigError(
            f"feature-range does not apply to text (token ids are not scaled), got {config.feature_range!r}"
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything one federated run needs, validated."""

    num_rounds: int = 10
    seed: int = 0
    dataset: str = "digits"
    label_column: str = "label"
    # the public label set of a data file whose labels are strings: class i is labels[i]
    # (declared in the scenario, never read from the data, so every holder maps alike)
    labels: tuple[str, ...] = ()
    partition: str = "auto"
    model: str = "mlp"  # a built-in name or "package.module:factory" (fedsys.models.factory)
    fix_model: bool = False  # apply Opacus' ModuleValidator.fix wherever the model is built
    tensorboard_dir: str = ""  # per-round TensorBoard scalars under DIR/<run name>; "" = off
    mlflow_uri: str = ""  # an MLflow tracking URI or file-store path (fedsys.mlflow_tracking); "" = off
    device: DeviceName = "auto"
    test_fraction: float = 0.2
    checkpoint_every: int = 1
    num_classes: int = 0  # deployment: the server holds no data to infer it from
    feature_shape: str = ""  # deployment: e.g. "30" or "1,8,8"
    out_dir: str = ""
    ledger_dir: str = ""
    resume_from: str = ""  # a run directory whose checkpoint to continue from
    # simulation only, a holder's own setting (never taken from the server): an .npz of audit
    # canaries (fedsys.audit.canaries) each simulated holder adds to its training split
    audit_canaries: str = ""
    # simulation only, likewise a holder's own setting: the canary clients of the client-level
    # audit (fedsys.audit.client_canaries); an included canary slot sends its direction
    audit_client_canaries: str = ""
    # the public range of a data file's values (simulation; a real holder declares its own)
    feature_range: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self) -> None:
        _require(self.num_rounds >= 1, "num-rounds", self.num_rounds, "must be >= 1")
        if self.dp.mode == "distributed" and not (self.dp.enabled and self.secagg.enabled):
            raise ConfigError(
                'dp.mode = "distributed" adds the noise in shares inside secure aggregation: '
                "it needs dp.enabled and secagg.enabled"
            )
        _require(0 < self.test_fraction < 1, "test-fraction", self.test_fraction, "must be in (0, 1)")
        _require(self.checkpoint_every >= 1, "checkpoint-every", self.checkpoint_every, "must be >= 1")
        if self.partition != "auto" and not _PARTITION_RE.match(self.partition):
            raise ConfigError(
                f"partition must be iid, natural, dirichlet:ALPHA or shards:K, got {self.partition!r}"
            )
        parse_feature_range(self.feature_range, key="feature-range")
        if ":" in self.model and not MODEL_REFERENCE_RE.match(self.model):
            raise ConfigError(f"model must be a built-in name or package.module:factory, got {self.model!r}")
        builtin = self.dataset in _BUILTIN_DATASETS or self.dataset.startswith("synthetic")
        if self.feature_range and builtin:
            raise ConfigError(
                f"feature-range applies to data files; built-in {self.dataset!r} carries its own "
                f"public range, got {self.feature_range!r}"
            )
        _check_dataset(self)
        _check_labels(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build from nested (TOML) or flat dotted (Flower run config) keys."""
        config: RunConfig = _build(cls, _nest(data), prefix="")
        return config

    @classmethod
    def from_toml(cls, path: Path) -> RunConfig:
        """Load a scenario file."""
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as err:
            raise ConfigError(f"scenario file not found: {path}") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"scenario file {path} is not valid TOML: {err}") from err
        return cls.from_mapping(data)

    def replace(self, overrides: Mapping[str, Any]) -> RunConfig:
        """Return a copy with dotted-key overrides applied (and validated)."""
        merged = _deep_merge(self.to_mapping(), _nest(overrides))
        return RunConfig.from_mapping(merged)

    def to_mapping(self) -> dict[str, Any]:
        """Nested mapping with kebab-case keys (round-trips through ``from_mapping``)."""
        return _to_mapping(self)

    def to_flat(self) -> dict[str, bool | int | float | str]:
        """Flat dotted mapping, the shape of Flower's run config."""
        flat: dict[str, bool | int | float | str] = {}
        for key, value in self.to_mapping().items():
            if isinstance(value, dict):
                flat.update({f"{key}.{k}": v for k, v in value.items()})
            elif isinstance(value, tuple):
                flat[key] = json.dumps(list(value))
            else:
                flat[key] = value
        return flat

    def declared_feature_range(self) -> FeatureRange | None:
        """The scenario's ``feature-range`` for a data file (``None`` when not declared)."""
        return parse_feature_range(self.feature_range, key="feature-range")

    def resolved_partition(self) -> str:
        """The partition spec with ``auto`` resolved for the data set."""
        if self.partition != "auto":
            return self.partition
        return "natural" if self.dataset.startswith("synthetic") else "dirichlet:0.5"

    def resolved(self) -> RunConfig:
        """This config with each ``auto`` the server settles replaced by what it settles to.

        That is ``partition`` of a simulated run (:meth:`resolved_partition`), so config.toml,
        MLflow and the holders all name the split that was used. A deployed run
        (``dataset = "node"``) splits nothing; ``device`` and ``dp.grad-sample-mode`` stay
        ``auto``: each holder settles them on its own hardware.
        """
        if self.dataset == "node" or self.partition != "auto":
            return self
        return dataclasses.replace(self, partition=self.resolved_partition())


def _require(ok: bool, key: str, value: object, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {rule}, got {value!r}")


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _nest(data: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in data.items():
        if "." in key:
            section, _, sub = key.partition(".")
            nested.setdefault(section, {})
            if not isinstance(nested[section], dict):
                raise ConfigError(f"{section} is a section, got a value for {section!r}")
            nested[section].update(_nest({sub: value}))
        elif isinstance(value, Mapping):
            nested.setdefault(key, {}).update(_nest(value))
        else:
            nested[key] = value
    return nested


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type[Any], data: Mapping[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    fields = {_kebab(f.name): f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(prefix + k for k in fields))
            raise ConfigError(f"unknown config key {prefix + key!r} (known: {known})")
        f = fields[key]
        kwargs[f.name] = _coerce(hints[f.name], value, prefix + key)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} is a section, got {value!r}")
        return _build(hint, value, prefix=f"{key}.")  # type: ignore[arg-type]
    if getattr(hint, "__origin__", None) is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if getattr(hint, "__origin__", None) is tuple:
        return _string_list(value, key)
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _string_list(value: Any, key: str) -> tuple[str, ...]:
    """A list of strings: a TOML array, or the JSON text that :meth:`RunConfig.to_flat` makes of it
    (Flower's run config holds scalars only)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError as err:
            raise ConfigError(f"{key} must be a list of strings, got {value!r}") from err
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of strings, got {value!r}")
    return tuple(value)


def _to_mapping(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value == ():  # an undeclared list: left out, as Flower's run config holds no lists
            continue
        out[_kebab(f.name)] = _to_mapping(value) if dataclasses.is_dataclass(value) else value
    return out
