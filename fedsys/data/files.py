"""A data holder's own files: CSV and Parquet (via pandas) and NPZ (arrays ``x``, ``y``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedsys.data.dataset import ArrayDataset
from fedsys.errors import DataError

DECLARE_LABELS = (
    'declare the label set in the scenario, e.g. labels = ["benign", "malignant"] (class i is the '
    "i-th label; a public list, never read from the data)"
)


def load_file(
    path: Path,
    *,
    label_column: str = "label",
    feature_columns: Sequence[str] = (),
    num_classes: int = 0,
    labels: Sequence[str] = (),
) -> ArrayDataset:
    """Load a labelled table or array file.

    Args:
        path: ``.csv``, ``.parquet`` / ``.pq`` or ``.npz`` file.
        label_column: column holding the class labels (tables only).
        feature_columns: columns to use as features; all other columns when empty.
        num_classes: number of classes; inferred as ``max(label) + 1`` when 0. Labels are
            class indices so that every holder agrees on their meaning.
        labels: the declared, public label set: labels are then these strings, and class ``i``
            is ``labels[i]`` (:func:`encode_labels`); empty: labels are integer class indices.

    Raises:
        DataError: the file is missing, malformed, or has non-numeric / missing values.
    """
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        x, y = _read_npz(path)
    elif suffix in {".csv", ".parquet", ".pq"}:
        x, y = _read_table(path, label_column, feature_columns, text_labels=bool(labels))
    else:
        raise DataError(f"unsupported data file type {suffix!r} for {path} (csv, parquet, npz)")
    if labels:
        return labelled(x, encode_labels(y, labels, path), len(labels), path)
    return labelled(x, y, num_classes, path)


def encode_labels(values: np.ndarray, labels: Sequence[str], source: Path | str) -> np.ndarray:
    """Class indices of string ``values`` in the order of the declared ``labels``.

    The label set is public (the scenario declares it), never read from the data, so every
    holder maps the same string to the same class.

    Raises:
        DataError: a value is missing or undeclared; the message names one undeclared value and
            how many rows hold it (the holder's own terminal), not the other values.
    """
    series = pd.Series(values, dtype="string")
    missing = int(series.isna().sum())
    if missing:
        raise DataError(f"{source}: {missing} row(s) have no label")
    codes = pd.Index(list(labels), dtype="string").get_indexer(series)
    undeclared = series[codes < 0]
    if len(undeclared):
        bad = str(undeclared.iloc[0])
        others = undeclared.nunique() - 1
        more = f"; {others} other undeclared value(s)" if others else ""
        raise DataError(
            f"{source}: label {bad!r} ({int((undeclared == bad).sum())} row(s)) is not among the "
            f"{len(labels)} declared labels{more}"
        )
    return np.asarray(codes, dtype=np.int64)


def _read_table(
    path: Path, label_column: str, feature_columns: Sequence[str], *, text_labels: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    try:
        frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if label_column not in frame.columns:
        raise DataError(
            f"{path} has no label column {label_column!r} (columns: {', '.join(map(str, frame.columns))})"
        )
    features = list(feature_columns) or [c for c in frame.columns if c != label_column]
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks feature column(s) {', '.join(missing)}")
    if not features:
        raise DataError(f"{path} has no feature columns besides {label_column!r}")
    if text_labels:  # read as written: "1" stays "1", never 1.0
        frame[label_column] = _raw_column(path, label_column, frame)
    elif not pd.api.types.is_numeric_dtype(frame[label_column]):
        raise DataError(f"{path}: label column {label_column!r} holds text; {DECLARE_LABELS}")
    for column in features if text_labels else [*features, label_column]:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            bad = frame[column][pd.to_numeric(frame[column], errors="coerce").isna()].iloc[0]
            raise DataError(f"{path}: column {column!r} is not numeric (e.g. value {bad!r})")
        nans = int(frame[column].isna().sum())
        if nans:
            raise DataError(f"{path}: column {column!r} has {nans} missing value(s)")
    return frame[features].to_numpy(np.float32), frame[label_column].to_numpy()


def _raw_column(path: Path, column: str, frame: pd.DataFrame) -> pd.Series:
    if path.suffix.lower() != ".csv":
        return frame[column].astype("string")
    raw = pd.read_csv(path, usecols=[column], dtype={column: "string"})
    return raw[column]


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays or "y" not in arrays:
                raise DataError(f"{path} must hold arrays 'x' and 'y', found {sorted(arrays.files)}")
            x, y = arrays["x"], arrays["y"]
    except (ValueError, OSError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if x.ndim < 2:
        raise DataError(f"{path}: 'x' must have one row per example, got shape {x.shape}")
    if not np.isfinite(x.astype(np.float64)).all():
        raise DataError(f"{path}: 'x' contains NaN or infinite values")
    if x.ndim == 3:  # N x H x W images: add a channel axis
        x = x[:, None]
    return x.astype(np.float32), y


def labelled(x: np.ndarray, y: np.ndarray, num_classes: int, path: Path | str) -> ArrayDataset:
    """Features with checked integer class labels; ``path`` names the source in errors.

    Raises:
        DataError: no examples, or labels that are not integer class indices in range.
    """
    if len(x) == 0:
        raise DataError(f"{path} holds no examples")
    if y.dtype.kind in "OSU":
        raise DataError(f"{path}: labels are text; {DECLARE_LABELS}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.number) or not np.all(np.mod(y, 1) == 0):
        raise DataError(f"{path}: labels must be integer class indices, got dtype {y.dtype}")
    labels = y.astype(np.int64)
    if labels.min() < 0:
        raise DataError(f"{path}: labels must be >= 0, got {int(labels.min())}")
    inferred = int(labels.max()) + 1
    classes = num_classes or max(inferred, 2)
    if inferred > classes:
        raise DataError(f"{path}: label {inferred - 1} is out of range for {classes} classes")
    return ArrayDataset(x, labels, classes)
