"""The data holder's participation policy: what a server may ask of it, decided by the holder alone.

The policy is built only from the holder's node config (deployment) or from the scenario
that plays every holder (simulation); it is never merged with the server's run config.
Every training request is checked *against* it before any example is read and before the
ledger is touched, so a refused request costs no privacy budget. A refusal carries a short
reason code the server may log; the holder's own log keeps the detail.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, get_args

from fedsys.config import RunConfig
from fedsys.errors import ConfigError


class Refusal(StrEnum):
    """Why a holder declines a request; the codes the server sees (nothing more)."""

    BUDGET = "budget"
    DP_REQUIRED = "policy-dp-required"
    SECAGG_REQUIRED = "policy-secagg-required"
    MALICIOUS_SECAGG_REQUIRED = "policy-malicious-secagg-required"
    NO_SECAGG_IDENTITY = "policy-no-secagg-identity"
    COHORT_TOO_SMALL = "policy-cohort-too-small"
    TOO_MANY_ROUNDS = "policy-too-many-rounds"
    MODEL_NOT_ALLOWED = "policy-model-not-allowed"
    DATA = "data-error"
    EVALUATION_PRIVATE = "policy-evaluation-private"


ShareEvaluation = Literal["secure", "plain", "none"]


@dataclass(frozen=True)
class HolderPolicy:
    """What a data holder accepts.

    Attributes:
        require_dp: Refuse any round without DP-SGD (the server's ``dp.enabled`` is a request).
        require_secagg: Refuse any round whose update would leave in the clear.
        require_malicious_secagg: Refuse any round that is not SecAgg+ against a malicious server
            (``secagg.mode = "malicious"``): a server cannot downgrade this holder to the protocol
            that trusts it. Implies ``require_secagg``.
        min_cohort: The smallest number of clients whose sum the holder lets be released; a
            plaintext round releases a cohort of one.
        max_rounds_per_run: Refuse rounds of a run beyond this many (None: no limit).
        share_epsilon: Tell the server this holder's cumulative epsilon (it depends on the
            sampling rate, hence on the number of examples).
        allowed_models: The ``package.module:factory`` models this holder lets a run build (the
            holder imports that module, which runs its code); built-in zoo names are always
            allowed. None allows any: only for simulation, where the scenario plays every holder.
        share_evaluation: Where this holder's federated-evaluation sums (correct, examples, loss,
            confusion counts of the model it is sent, on its held-out split) may go: ``"secure"``
            only inside a SecAgg+ sum, ``"plain"`` also in a plaintext reply, ``"none"`` nowhere
            (it contributes zeros to a secure sum).
        local_noise_multiplier: Distributed DP only: the least noise this holder adds by itself, in
            noise-multiplier units (standard deviation ``local_noise_multiplier x Delta_2`` per
            coordinate), so that its vector alone stays DP if secure aggregation fails (the masks
            are broken, or the server colludes with the other holders); 0 adds only its share.
    """

    require_dp: bool = False
    require_secagg: bool = False
    require_malicious_secagg: bool = False
    min_cohort: int = 1
    max_rounds_per_run: int | None = None
    share_epsilon: bool = True
    allowed_models: frozenset[str] | None = None
    share_evaluation: ShareEvaluation = "plain"
    local_noise_multiplier: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.local_noise_multiplier) and self.local_noise_multiplier >= 0):
            raise ConfigError(
                f"node config ddp-local-noise-multiplier must be a finite number >= 0, "
                f"got {self.local_noise_multiplier!r}"
            )
        if self.share_evaluation not in get_args(ShareEvaluation):
            raise ConfigError(
                f"node config share-evaluation must be secure, plain or none, got {self.share_evaluation!r}"
            )
        if self.min_cohort < 1:
            raise ConfigError(f"node config min-cohort must be >= 1, got {self.min_cohort}")
        if self.max_rounds_per_run is not None and self.max_rounds_per_run < 1:
            raise ConfigError(f"node config max-rounds-per-run must be >= 1, got {self.max_rounds_per_run}")


POLICY_KEYS = (
    "require-dp",
    "require-secagg",
    "require-malicious-secagg",
    "min-cohort",
    "max-rounds-per-run",
    "share-epsilon",
    "allow-models",
    "share-evaluation",
    "ddp-local-noise-multiplier",
)

# A holder that names no policy in deployment gets these: DP whenever it has a finite
# budget, secure aggregation, and never a released sum of fewer than two holders.
_DEPLOYMENT_MIN_COHORT = 2


def deployment_policy(
    node_config: Mapping[str, object], *, max_epsilon: float, has_identity: bool = False
) -> HolderPolicy:
    """The policy in a SuperNode's node config, with the safe defaults of a real data holder.

    Args:
        node_config: The holder's node config.
        max_epsilon: The holder's total budget (DP is required by default when it is finite).
        has_identity: The holder has a SecAgg+ identity key and a peers file; then malicious-server
            SecAgg+ is required by default.

    Raises:
        ConfigError: a policy value has the wrong type or is out of range, or malicious SecAgg+ is
            required without an identity key and a peers file.
    """
    min_cohort = _count(node_config, "min-cohort")
    require_malicious = _flag(node_config, "require-malicious-secagg", default=has_identity)
    if require_malicious and not has_identity:
        raise ConfigError(
            "node config require-malicious-secagg = true needs identity-key and peers "
            "(fedsys client start --key ... --peers ...)"
        )
    return HolderPolicy(
        require_dp=_flag(node_config, "require-dp", default=math.isfinite(max_epsilon)),
        require_secagg=_flag(node_config, "require-secagg", default=True),
        require_malicious_secagg=require_malicious,
        min_cohort=_DEPLOYMENT_MIN_COHORT if min_cohort is None else min_cohort,
        max_rounds_per_run=_count(node_config, "max-rounds-per-run"),
        share_epsilon=_flag(node_config, "share-epsilon", default=False),
        allowed_models=frozenset(
            ref.strip() for ref in str(node_config.get("allow-models", "")).split(",") if ref.strip()
        ),
        share_evaluation=str(node_config.get("share-evaluation", "secure")).strip().lower(),  # type: ignore[arg-type]
        local_noise_multiplier=_number(node_config, "ddp-local-noise-multiplier", default=0.0),
    )


def check_request(
    policy: HolderPolicy,
    config: RunConfig,
    *,
    server_round: int,
    secure: bool,
    cohort: int = 1,
    threshold: int = 1,
    evaluate_only: bool = False,
) -> tuple[Refusal, str] | None:
    """Check a server's request against the holder's policy; reads no data.

    Args:
        policy: The holder's policy.
        config: What the server asks for (its run config).
        server_round: The round the server says this is.
        secure: Whether the update would travel masked (SecAgg+) rather than in the clear.
        cohort: The number of clients the server says take part in the secure sum.
        threshold: The SecAgg+ threshold: fewest surviving clients whose sum can be released.
        evaluate_only: The request only scores a model (no training, no budget): the round limit
            does not apply, but the evaluation must be one the holder shares this way.

    Returns:
        None to proceed, else the refusal code and a one-line reason.
    """
    allowed = policy.allowed_models
    if ":" in config.model and allowed is not None and config.model not in allowed:
        return Refusal.MODEL_NOT_ALLOWED, (
            f"this data holder builds only built-in models and those in its allow-models; "
            f"the run asks for {config.model!r}"
        )
    if policy.require_dp and not config.dp.enabled:
        return Refusal.DP_REQUIRED, "this data holder requires DP-SGD; the run asks for dp.enabled = false"
    if (policy.require_secagg or policy.require_malicious_secagg) and not secure:
        return Refusal.SECAGG_REQUIRED, "this data holder requires secure aggregation; the round is plaintext"
    if policy.require_malicious_secagg and config.secagg.mode != "malicious":
        return Refusal.MALICIOUS_SECAGG_REQUIRED, (
            "this data holder requires SecAgg+ against a malicious server; "
            f"the run asks for secagg.mode = {config.secagg.mode!r}"
        )
    released = min(cohort, threshold) if secure else 1
    if released < policy.min_cohort:
        return Refusal.COHORT_TOO_SMALL, (
            f"this data holder releases only sums of >= {policy.min_cohort} clients; "
            f"the round could release a sum of {released}"
        )
    if evaluate_only and (
        policy.share_evaluation == "none" or not (secure or policy.share_evaluation == "plain")
    ):
        where = "nowhere" if policy.share_evaluation == "none" else "only inside SecAgg+"
        return Refusal.EVALUATION_PRIVATE, f"this data holder shares evaluation sums {where}"
    limit = policy.max_rounds_per_run
    if not evaluate_only and limit is not None and max(server_round, config.num_rounds) > limit:
        return Refusal.TOO_MANY_ROUNDS, (
            f"this data holder takes part in at most {limit} rounds per run; "
            f"the run asks for {config.num_rounds} (round {server_round})"
        )
    return None


def _flag(config: Mapping[str, object], key: str, *, default: bool) -> bool:
    value = config.get(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConfigError(f"node config {key} must be true or false, got {value!r}")


def _count(config: Mapping[str, object], key: str) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    try:
        return int(str(value))
    except ValueError as err:
        raise ConfigError(f"node config {key} must be an integer, got {value!r}") from err


def _number(config: Mapping[str, object], key: str, *, default: float) -> float:
    value = config.get(key, default)
    try:
        return float(str(value))
    except ValueError as err:
        raise ConfigError(f"node config {key} must be a number, got {value!r}") from err
