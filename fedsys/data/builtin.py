"""Built-in data sets that need no download.

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped
  inside scikit-learn; returned as ``N x 1 x 8 x 8`` in [0, 1].
- ``breast-cancer``: scikit-learn's Wisconsin diagnostic data (569 rows, 30 features,
  2 classes); standardised later by each holder on its own data.
- ``synthetic:ALPHA,BETA``: the FedProx generator (Li et al., MLSys 2020, Sec. 5.1), one
  device per client, naturally non-IID.
"""

from __future__ import annotations

import numpy as np

from fedsys.data.dataset import ArrayDataset
from fedsys.errors import DataError

SYNTHETIC_FEATURES = 60
SYNTHETIC_CLASSES = 10


def load_digits() -> ArrayDataset:
    """Scikit-learn's bundled handwritten digits, scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    return ArrayDataset(x, bunch.target.astype(np.int64), num_classes=10)


def load_breast_cancer() -> ArrayDataset:
    """Scikit-learn's bundled breast-cancer table (unscaled)."""
    from sklearn.datasets import load_breast_cancer as _load

    bunch = _load()
    return ArrayDataset(bunch.data.astype(np.float32), bunch.target.astype(np.int64), 2)


def parse_synthetic(spec: str) -> tuple[float, float]:
    """Parse ``synthetic:ALPHA,BETA`` (both default to 0 when omitted)."""
    _, _, params = spec.partition(":")
    if not params:
        return 0.0, 0.0
    parts = params.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError as err:
        raise DataError(f"synthetic data set wants synthetic:ALPHA,BETA, got {spec!r}") from err
    if len(values) != 2 or min(values) < 0:
        raise DataError(f"synthetic data set wants two numbers >= 0, got {spec!r}")
    return values[0], values[1]


def synthetic_device(alpha: float, beta: float, *, device: int, seed: int) -> ArrayDataset:
    """Samples of one FedProx ``Synthetic(alpha, beta)`` device.

    u_k ~ N(0, alpha); W_k, b_k ~ N(u_k, 1); B_k ~ N(0, beta); v_k ~ N(B_k, 1);
    x ~ N(v_k, Sigma) with Sigma_jj = j^-1.2; y = argmax softmax(W_k x + b_k).
    The device's size is log-normal (as in the paper), between 50 and 1,000.
    Deterministic in ``(seed, device)``; the data are not secret, so a NumPy generator fits.
    """
    rng = np.random.default_rng([seed, device, 0x5EED])
    d, k = SYNTHETIC_FEATURES, SYNTHETIC_CLASSES
    n = int(np.clip(rng.lognormal(4.0, 1.0), 50, 1000))
    u = rng.normal(0.0, np.sqrt(alpha))
    w = rng.normal(u, 1.0, size=(k, d))
    b = rng.normal(u, 1.0, size=k)
    big_b = rng.normal(0.0, np.sqrt(beta))
    v = rng.normal(big_b, 1.0, size=d)
    scale = np.arange(1, d + 1, dtype=np.float64) ** (-1.2 / 2)
    x = v + rng.standard_normal((n, d)) * scale
    y = np.argmax(x @ w.T + b, axis=1)
    return ArrayDataset(x.astype(np.float32), y.astype(np.int64), num_classes=k)
