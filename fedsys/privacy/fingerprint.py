"""Dataset fingerprints: recorded per ledger entry to notice changed data (never a budget key)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from fedsys.errors import ConfigError


def fingerprint_dataset(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> str:
    """SHA-256 over the dtype, shape and raw bytes of features and labels.

    Raises:
        ConfigError: an array has dtype ``object`` (its bytes are pointers, not data).
    """
    digest = hashlib.sha256(b"fedsys-dataset-v1\n")
    for name, array in (("x", x), ("y", y)):
        if array.dtype.hasobject:
            raise ConfigError(f"cannot fingerprint {name} with dtype {array.dtype}; convert first")
        contiguous = np.ascontiguousarray(array)
        digest.update(f"{name}:{contiguous.dtype.str}:{contiguous.shape}\n".encode())
        digest.update(contiguous.data)
    return digest.hexdigest()
