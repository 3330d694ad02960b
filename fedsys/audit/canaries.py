"""Canary records for the one-run audit: Dirac canaries on rarely used input features.

A canary is a record whose input is zero everywhere except one feature ``j``, set to
``amplitude``, with a label ``c``. For any model whose first layer is linear in the input
(logistic regression, the MLPs; the CNNs only partly), its gradient then lives in the
first-layer weights of feature ``j`` (plus biases): when ``j`` is a feature the real
records (almost) never use, the canary moves coordinates nothing else moves, which is the
input-space analogue of the Dirac gradient canaries of Steinke, Nasr & Jagielski (NeurIPS
2023, Sec. 6, white-box setting). Canaries that share a feature differ in their label,
so no two canaries are the same record.

A large ``amplitude`` (beyond the data's public [0, 1] range) makes the canary's raw
gradient far larger than the clipping norm: per-sample clipping must cut it down, so an
audit with such canaries also tests that clipping happens. DP's guarantee holds for any
record, so out-of-range canaries are legitimate test inputs.

Each canary is included with probability 1/2, independently of everything else, from the
auditor's own generator; in a federated audit each one goes to one holder chosen
uniformly at random. The inclusion bits are the auditor's secret until the guesses are made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsys.data.dataset import ArrayDataset
from fedsys.errors import ConfigError, DataError

DEFAULT_AMPLITUDE = 30.0  # one canary per feature: far beyond the clipping norm, so clipping is tested
# Canaries sharing a feature have identical inputs and conflicting labels: a large value saturates
# them and they fight. Measured, `fedsys audit simulations/digits.toml --no-dp`, audit seed 0:
# amplitude 1 -> lower bound 0.68, 5 -> 2.14, 30 -> 1.14.
SHARED_AMPLITUDE = 5.0
MIN_SPREAD = 100  # fewer rare features than this: ten canaries (labels) per rare feature
MAX_DEFAULT_CANARIES = 1000
RARE_FEATURE_ACTIVITY = 0.01  # a feature non-zero in fewer than 1% of records counts as rarely used


@dataclass(frozen=True)
class CanarySet:
    """m canaries, whether each is in the training data, and which holder trains on it.

    Attributes:
        x: Inputs, ``m x feature_shape``, float32.
        y: Labels, ``m``, int64.
        feature: The flat index of each canary's single non-zero feature.
        included: The secret inclusion bits (probability 1/2 each).
        holder: The simulated holder (partition id) each canary goes to; 0 for central training.
        amplitude: The value of the non-zero feature.
    """

    x: np.ndarray
    y: np.ndarray
    feature: np.ndarray
    included: np.ndarray
    holder: np.ndarray
    amplitude: float

    def __len__(self) -> int:
        return len(self.y)

    def training_records(self, holder: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The included canaries (of ``holder`` only, when given): what is added to training data."""
        keep = self.included if holder is None else self.included & (self.holder == holder)
        return self.x[keep], self.y[keep]

    def save(self, path: Path) -> Path:
        """Write all arrays to ``path`` (.npz), the file a simulated holder reads its canaries from."""
        np.savez(
            path,
            x=self.x,
            y=self.y,
            feature=self.feature,
            included=self.included,
            holder=self.holder,
            amplitude=np.float64(self.amplitude),
        )
        return path

    @classmethod
    def load(cls, path: Path) -> CanarySet:
        """Read a file written by :meth:`save`.

        Raises:
            DataError: the file is missing or not a canary file.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    x=data["x"],
                    y=data["y"],
                    feature=data["feature"],
                    included=data["included"].astype(bool),
                    holder=data["holder"],
                    amplitude=float(data["amplitude"]),
                )
        except (OSError, KeyError, ValueError) as err:
            raise DataError(f"cannot read audit canaries from {path}: {err}") from err


def feature_activity(data: ArrayDataset) -> np.ndarray:
    """Fraction of records in which each (flat) feature is non-zero."""
    flat = data.x.reshape(len(data), -1)
    return np.asarray((flat != 0).mean(axis=0), dtype=np.float64)


def default_canary_count(data: ArrayDataset) -> int:
    """One canary per rarely used feature when there are at least 100 of them (up to 1,000);
    otherwise one per label on each (at least 2)."""
    rare = int((feature_activity(data) < RARE_FEATURE_ACTIVITY).sum())
    if rare >= MIN_SPREAD:
        return min(MAX_DEFAULT_CANARIES, rare)
    return max(2, min(MAX_DEFAULT_CANARIES, rare * data.num_classes))


def make_canaries(
    data: ArrayDataset,
    *,
    count: int,
    rng: np.random.Generator,
    amplitude: float | None = None,
    holders: int = 1,
) -> CanarySet:
    """Dirac canaries on the least used features of ``data``, one label each per feature.

    Args:
        data: Training data of the scenario (its feature statistics choose the features; the
            canaries themselves carry no real record).
        count: m, the number of canaries.
        rng: The auditor's generator (features, labels, inclusion bits, holders).
        amplitude: Value of each canary's one non-zero feature (> 0). Default: 30 when every
            canary has a feature of its own, 5 when canaries share features (a large value would
            saturate identical inputs with conflicting labels, and the canaries would fight).
        holders: Number of simulated holders to spread the canaries over.

    Raises:
        ConfigError: ``count`` < 2 or more than features x labels, ``amplitude`` <= 0 or
            ``holders`` < 1 (echoed).
    """
    activity = feature_activity(data)
    classes = data.num_classes
    limit = activity.size * classes
    if not 2 <= count <= limit:
        raise ConfigError(f"--canaries must be in [2, {limit}] (features x labels), got {count}")
    if holders < 1:
        raise ConfigError(f"canaries need at least one holder, got {holders}")
    # Spread over as many rarely used features as there are (one canary each: no two canaries
    # share an input, so none keeps another's gradient alive); more canaries share features.
    rare = int((activity < RARE_FEATURE_ACTIVITY).sum())
    used = max(-(-count // classes), min(count, rare))
    if amplitude is None:
        amplitude = DEFAULT_AMPLITUDE if used >= count else SHARED_AMPLITUDE
    if not amplitude > 0:
        raise ConfigError(f"canary amplitude must be > 0, got {amplitude!r}")
    features = np.argsort(activity, kind="stable")[:used]
    slot = np.arange(count) % used  # round robin: features as evenly shared as possible
    labels = np.stack([rng.permutation(classes) for _ in range(used)])  # distinct labels per feature
    label = labels[slot, np.arange(count) // used]
    feature = features[slot]
    x = np.zeros((count, activity.size), dtype=np.float32)
    x[np.arange(count), feature] = amplitude
    if len(data) == 0:
        raise DataError("cannot place canaries without training data")
    return CanarySet(
        x=x.reshape((count, *data.feature_shape)),
        y=label.astype(np.int64),
        feature=feature.astype(np.int64),
        included=rng.random(count) < 0.5,
        holder=rng.integers(0, holders, size=count).astype(np.int64),
        amplitude=float(amplitude),
    )


def with_canaries(data: ArrayDataset, canaries: CanarySet, holder: int | None = None) -> ArrayDataset:
    """``data`` plus the included canaries (of ``holder``, when given), appended at the end.

    Raises:
        DataError: the canaries' feature shape is not the data's.
    """
    x, y = canaries.training_records(holder)
    if x.shape[1:] != data.x.shape[1:]:
        raise DataError(f"canaries have features {x.shape[1:]}, the data {data.x.shape[1:]}")
    return ArrayDataset(
        np.concatenate([data.x, x.astype(data.x.dtype)]), np.concatenate([data.y, y]), data.num_classes
    )
