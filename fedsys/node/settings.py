"""A data holder's own settings: where its data and ledger are, and its privacy budget.

In deployment they come from the SuperNode's ``--node-config``, which only the data holder
controls; nothing the server sends can change them. In simulation the scenario plays every
data holder, so the budget comes from the scenario's ``[budget]`` section.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedsys.config import BudgetConfig, FeatureRange, RunConfig, parse_feature_range
from fedsys.errors import ConfigError
from fedsys.node.policy import HolderPolicy, deployment_policy
from fedsys.privacy.ledger_schema import DEFAULT_BUDGET_KEY, check_budget_key

NODE_KEYS = {
    "data-path": str,
    "label-column": str,
    "num-classes": int,
    "max-epsilon": float,
    "target-delta": float,
    "budget-policy": str,
    "budget-accountant": str,
    "ledger-path": str,
    "device": str,
    "feature-range": str,  # public range of the holder's values: "LO,HI", a .csv table, or "none"
    "dataset-name": str,  # the budget key: one budget per declared data set (default one per holder)
    # SecAgg+ against a malicious server (fedsys.node.pki): this holder's signing key (the node-auth
    # OpenSSH key) and the other holders' identity public keys, exchanged out of band among holders
    "identity-key": str,
    "peers": str,
    # the holder's participation policy (fedsys.node.policy), parsed there
    "require-dp": str,
    "require-secagg": str,
    "require-malicious-secagg": str,
    "min-cohort": str,
    "max-rounds-per-run": str,
    "share-epsilon": str,
    "share-evaluation": str,  # secure | plain | none: where federated-evaluation sums may go
    "ddp-local-noise-multiplier": float,  # distributed DP: the noise floor this holder adds by itself
    "allow-models": str,  # comma-separated package.module:factory models the holder lets a run import
}
_SIMULATION_KEYS = {"partition-id", "num-partitions"}


@dataclass(frozen=True)
class HolderSettings:
    """Everything a client decides for itself."""

    budget: BudgetConfig
    ledger_path: Path
    device: str
    policy: HolderPolicy = HolderPolicy()
    data_path: Path | None = None
    label_column: str = "label"
    num_classes: int = 0
    partition_id: int | None = None
    num_partitions: int | None = None
    feature_range: FeatureRange | None = None  # deployment: the holder's own declaration
    dataset_name: str = DEFAULT_BUDGET_KEY
    identity_key: Path | None = None  # deployment: SecAgg+ signing key (OpenSSH, ECDSA P-384 or Ed25519)
    peers: Path | None = None  # deployment: the holders' trusted identity public keys (OpenSSH lines)

    @property
    def simulated(self) -> bool:
        """True for a virtual client of the simulation engine."""
        return self.partition_id is not None


def is_virtual_node(node_config: Mapping[str, object]) -> bool:
    """True for a virtual node of the simulation engine (its node config names its partitions)."""
    return "num-partitions" in node_config


def holder_settings(
    node_config: Mapping[str, object], run: RunConfig, *, partition: int | None = None
) -> HolderSettings:
    """Parse a SuperNode's node config (deployment) or a virtual node's (simulation).

    ``partition`` is the partition the simulation server assigned for this round; it is
    honoured only on a virtual node (whose node config has ``num-partitions``).
    """
    if is_virtual_node(node_config):
        pid = partition if partition is not None else int(str(node_config["partition-id"]))
        num = run.simulation.num_clients if partition is not None else int(str(node_config["num-partitions"]))
        ledger_dir = Path(run.ledger_dir or "runs/ledgers")
        return HolderSettings(
            budget=run.budget,
            ledger_path=ledger_dir / f"client-{pid:05d}.sqlite",
            device=run.device,
            partition_id=pid,
            num_partitions=num,
            # the scenario plays every holder, so its floor is theirs
            policy=HolderPolicy(local_noise_multiplier=run.dp.local_noise_multiplier),
        )
    values = {k: _typed(k, v) for k, v in node_config.items() if k not in _SIMULATION_KEYS}
    if "data-path" not in values:
        raise ConfigError("node config lacks data-path (the data holder's own data file)")
    if "max-epsilon" not in values:
        raise ConfigError("node config lacks max-epsilon (the data holder's total privacy budget)")
    budget = BudgetConfig(
        max_epsilon=float(str(values["max-epsilon"])),
        target_delta=float(str(values.get("target-delta", 1e-5))),
        policy=str(values.get("budget-policy", "refuse")),  # type: ignore[arg-type]
        accountant=str(values.get("budget-accountant", "rdp")),  # type: ignore[arg-type]
    )
    if budget.policy not in ("refuse", "truncate"):
        raise ConfigError(f"node config budget-policy must be refuse or truncate, got {budget.policy!r}")
    if budget.accountant not in ("rdp", "prv"):
        raise ConfigError(f"node config budget-accountant must be rdp or prv, got {budget.accountant!r}")
    data_path = Path(str(values["data-path"]))
    identity_key = Path(str(values["identity-key"])) if values.get("identity-key") else None
    peers = Path(str(values["peers"])) if values.get("peers") else None
    if peers is not None and identity_key is None:
        raise ConfigError(
            f"node config peers = {str(peers)!r} needs identity-key (the key this holder signs with)"
        )
    has_identity = identity_key is not None and peers is not None
    return HolderSettings(
        budget=budget,
        ledger_path=Path(str(values.get("ledger-path", data_path.with_suffix(".ledger.sqlite")))),
        device=str(values.get("device", "auto")),
        data_path=data_path,
        label_column=str(values.get("label-column", "label")),
        num_classes=int(str(values.get("num-classes", 0))),
        feature_range=parse_feature_range(
            str(values.get("feature-range", "")), key="node config feature-range"
        ),
        policy=deployment_policy(values, max_epsilon=budget.max_epsilon, has_identity=has_identity),
        dataset_name=check_budget_key(str(values.get("dataset-name", DEFAULT_BUDGET_KEY))),
        identity_key=identity_key,
        peers=peers,
    )


def _typed(key: str, value: object) -> object:
    if key not in NODE_KEYS:
        raise ConfigError(f"unknown node config key {key!r} (known: {', '.join(sorted(NODE_KEYS))})")
    kind = NODE_KEYS[key]
    try:
        return kind(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"node config {key} must be {kind.__name__}, got {value!r}") from err
