"""Feature scaling with declared public ranges: clip, then map to [-1, 1], one record at a time.

Nothing here looks at more than one record: the bounds are public constants (a data set's
documentation, or the data holder's declaration), never statistics of the private rows.
So no record changes how any other record is scaled, and nothing computed from the data
shapes training or leaves the holder (an outlier is clipped like any other value).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedsys.config import FeatureRange
from fedsys.data.dataset import ArrayDataset
from fedsys.errors import DataError


@dataclass(frozen=True)
class FeatureBounds:
    """Public bounds: scalars for every feature, or one value per feature column."""

    low: np.ndarray
    high: np.ndarray

    def __post_init__(self) -> None:
        if self.low.shape != self.high.shape:
            raise DataError(f"feature bounds differ in shape: {self.low.shape} != {self.high.shape}")
        if not (np.isfinite(self.low).all() and np.isfinite(self.high).all()):
            raise DataError(f"feature bounds must be finite, got low {self.low} and high {self.high}")
        bad = np.flatnonzero(np.atleast_1d(self.low >= self.high))
        if bad.size:
            raise DataError(f"feature bounds need low < high, violated at feature(s) {bad.tolist()}")


def uniform_bounds(low: float, high: float) -> FeatureBounds:
    """The same ``[low, high]`` for every feature."""
    return FeatureBounds(np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64))


def scale(data: ArrayDataset, bounds: FeatureBounds | None) -> ArrayDataset:
    """Clip each value to its public bounds and map it affinely to [-1, 1] (``None``: as given).

    Raises:
        DataError: per-column bounds do not match the number of feature columns.
    """
    if bounds is None:
        return data
    if bounds.low.ndim and (data.x.ndim != 2 or data.x.shape[1] != bounds.low.shape[0]):
        raise DataError(
            f"per-column feature ranges cover {bounds.low.shape[0]} column(s); "
            f"the data has feature shape {data.feature_shape}"
        )
    clipped = np.clip(data.x.astype(np.float64), bounds.low, bounds.high)
    unit = 2.0 * (clipped - bounds.low) / (bounds.high - bounds.low) - 1.0
    return ArrayDataset(unit.astype(np.float32), data.y, data.num_classes)


def read_range_table(path: Path) -> tuple[list[str], FeatureBounds]:
    """Read a ``column,low,high`` CSV table: the feature columns, in order, and their bounds.

    Raises:
        DataError: the table is missing, malformed, names a column twice, or has bad bounds.
    """
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise DataError(f"cannot read feature-range table {path}: {err}") from err
    if list(table.columns) != ["column", "low", "high"] or table.empty:
        raise DataError(
            f"feature-range table {path} needs a header column,low,high and one row per "
            f"feature, got columns {list(table.columns)} and {len(table)} row(s)"
        )
    columns = [str(c) for c in table["column"]]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise DataError(f"feature-range table {path} names column(s) twice: {', '.join(repeated)}")
    try:
        low, high = (table[k].to_numpy(np.float64) for k in ("low", "high"))
    except ValueError as err:
        raise DataError(f"feature-range table {path}: low and high must be numbers ({err})") from err
    try:
        return columns, FeatureBounds(low, high)
    except DataError as err:
        raise DataError(f"feature-range table {path}: {err}") from err


def declared_bounds(feature_range: FeatureRange) -> tuple[list[str], FeatureBounds | None]:
    """The feature columns a declaration names (empty: all) and its bounds (``None``: as given)."""
    if feature_range.kind == "none":
        return [], None
    if feature_range.kind == "uniform":
        return [], uniform_bounds(feature_range.low, feature_range.high)
    return read_range_table(Path(feature_range.table))
