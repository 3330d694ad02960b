"""A user's own data loader, named ``dataset = "package.module:loader"``.

The contract (what a user writes)::

    def loader():                       # no arguments
        return features, labels          # array-likes: N x feature_shape, and N integer labels
        # or: return a torch.utils.data.Dataset whose items are (features, label) pairs

- In simulation the loader returns the WHOLE data set. It is called once per process that
  needs data (the server's pre-check and central test set, and each Ray worker), and
  fedsys then splits off the central test set (``test-fraction``) and partitions the rest
  across the virtual clients with the scenario's ``partition`` (``iid``, ``dirichlet:A``,
  ``shards:K``), exactly as for a data file. So it must return the same data every time
  (no unseeded shuffling).
- Its module is imported by name wherever data is loaded, like a model factory
  (:mod:`fedsys.models.factory`): installed, or on ``PYTHONPATH`` (Ray workers get the
  driver's working directory).

Features become float32 (integer token ids for :mod:`fedsys.models.sequence` stay exact
below 2**24); labels must be integer class indices, and the number of classes is
``max(label) + 1``. fedsys does not rescale what a loader returns, unless the scenario
declares a public ``feature-range``: scale inside the loader with public constants only
(e.g. ``/ 255`` for 8-bit pixels), never with statistics (mean, std, min/max) of the data.
A ``Dataset`` is read item by item into memory, so it suits data sets that fit in RAM.
"""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fedsys.config import MODEL_REFERENCE_RE, is_dataset_loader
from fedsys.data.dataset import ArrayDataset
from fedsys.data.files import labelled
from fedsys.errors import ConfigError, DataError
from fedsys.references import import_callable

Loader = Callable[[], Any]


def resolve_loader(name: str) -> Loader:
    """The callable a ``package.module:loader`` reference names.

    Raises:
        ConfigError: a malformed reference, a module that cannot be imported here, or an
            attribute that is missing or not callable.
    """
    if not is_dataset_loader(name):
        raise ConfigError(f"dataset loader must be package.module:loader, got {name!r}")
    target = import_callable(name, kind="dataset", where="it must be importable wherever data is loaded")
    loader: Loader = target
    return loader


def load_user_data(name: str) -> ArrayDataset:
    """Call the loader ``name`` names and check what it returned.

    Raises:
        ConfigError: the reference does not resolve.
        DataError: the loader fails, or returns something other than ``(features, labels)``
            or a ``Dataset`` of ``(features, label)`` pairs, or bad arrays.
    """
    loader = resolve_loader(name)
    try:
        returned = loader()
    except Exception as err:  # user code: report it as this data set's problem
        raise DataError(f"dataset {name!r} failed: {type(err).__name__}: {err}") from err
    if isinstance(returned, Dataset):
        features, labels = _dataset_arrays(returned, name)
    elif isinstance(returned, tuple) and len(returned) == 2:
        features, labels = (
            _array(part, name, what) for part, what in zip(returned, ("features", "labels"), strict=True)
        )
    else:
        raise DataError(
            f"dataset {name!r} must return (features, labels) or a torch.utils.data.Dataset, "
            f"got {_describe(returned)}"
        )
    return _checked(features, labels, name)


def loader_reference(loader: str | PathLike[str] | Callable[..., Any]) -> str:
    """The name a loader is imported by (``package.module:loader``); strings and paths pass through.

    Raises:
        ConfigError: the callable is not importable by its module and qualified name.
    """
    if isinstance(loader, str | PathLike):
        return str(loader)
    reference = f"{getattr(loader, '__module__', '') or ''}:{getattr(loader, '__qualname__', '') or ''}"
    if reference.startswith("__main__:") or not MODEL_REFERENCE_RE.match(reference):
        raise ConfigError(
            f"data loader {loader!r} cannot be imported by name, which Ray workers need; define it "
            "in an importable module and pass it, or 'package.module:loader'"
        )
    if resolve_loader(reference) is not loader:
        raise ConfigError(f"data loader {loader!r} is not what {reference!r} imports")
    return reference


def _dataset_arrays(dataset: Dataset[Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        size = len(dataset)  # type: ignore[arg-type]  # map-style datasets define __len__
    except TypeError as err:
        raise DataError(
            f"dataset {name!r} returned a Dataset without a length (an IterableDataset?)"
        ) from err
    xs, ys = [], []
    for index in range(size):
        try:
            item = dataset[index]
        except Exception as err:  # user code
            raise DataError(f"dataset {name!r}: item {index} failed: {type(err).__name__}: {err}") from err
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise DataError(
                f"dataset {name!r}: item {index} must be a (features, label) pair, got {_describe(item)}"
            )
        xs.append(_array(item[0], name, f"item {index}'s features"))
        ys.append(_array(item[1], name, f"item {index}'s label"))
    if not xs:
        raise DataError(f"dataset {name!r} holds no examples")
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise DataError(f"dataset {name!r}: items differ in feature shape: {sorted(shapes)[:3]}")
    if any(y.shape != () for y in ys):
        raise DataError(f"dataset {name!r}: each item's label must be one integer")
    return np.stack(xs), np.stack(ys)


def _array(value: object, name: str, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise DataError(f"dataset {name!r}: {what} is not an array ({type(value).__name__}): {err}") from err
    if array.dtype.hasobject or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise DataError(f"dataset {name!r}: {what} must be numeric, got dtype {array.dtype}")
    return array


def _checked(features: np.ndarray, labels: np.ndarray, name: str) -> ArrayDataset:
    if features.ndim < 2:
        raise DataError(f"dataset {name!r}: features must be N x feature_shape, got shape {features.shape}")
    if labels.ndim != 1 or len(labels) != len(features):
        raise DataError(
            f"dataset {name!r}: labels must be one per example, got shape {labels.shape} for "
            f"{len(features)} examples"
        )
    x = features.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"dataset {name!r}: features contain NaN or infinite values")
    return labelled(x, labels, 0, f"dataset {name!r}")


def _describe(value: object) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return type(value).__name__
