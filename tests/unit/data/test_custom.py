import byo_loaders
import numpy as np
import pytest

from fedsys.config import RunConfig
from fedsys.data import central_test_data, simulated_client_data
from fedsys.data.custom import load_user_data, loader_reference
from fedsys.data.federated import check_scenario_data
from fedsys.errors import ConfigError, DataError


def test_arrays_and_tensors_become_float_features_and_integer_labels():
    for name in ("byo_loaders:blobs", "byo_loaders:tensors"):
        data = load_user_data(name)

        assert data.x.dtype == np.float32 and data.feature_shape == (4,), name
        assert data.y.dtype == np.int64 and data.num_classes == 3, name
        np.testing.assert_allclose(data.x, byo_loaders.blobs()[0].astype(np.float32))


def test_a_torch_dataset_is_read_item_by_item():
    data = load_user_data("byo_loaders:images")

    assert data.feature_shape == (1, 4, 4) and len(data) == 30 and data.num_classes == 2
    assert data.x[7].max() == pytest.approx(7 / 30) and data.y[7] == 1


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "byo_loaders:ragged_dataset",
            r"must return \(features, labels\) or a torch.utils.data.Dataset, got list",
        ),
        ("byo_loaders:ragged", r"items differ in feature shape: \[\(2,\), \(3,\)\]"),
        ("byo_loaders:stream", "returned a Dataset without a length"),
        ("byo_loaders:nan_features", "features contain NaN or infinite values"),
        ("byo_loaders:float_labels", "labels must be integer class indices"),
        ("byo_loaders:too_few_labels", r"labels must be one per example, got shape \(2,\) for 3 examples"),
        ("byo_loaders:flat_features", r"features must be N x feature_shape, got shape \(3,\)"),
        ("byo_loaders:strings", "features must be numeric, got dtype <U1"),
        ("byo_loaders:broken", r"dataset 'byo_loaders:broken' failed: FileNotFoundError: /data/site.csv"),
    ],
)
def test_bad_returns_are_one_line_data_errors_naming_the_loader(name, message):
    with pytest.raises(DataError, match=message) as caught:
        load_user_data(name)

    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module:load", "cannot import 'no_such_module'"),
        ("byo_loaders:missing", "has no callable 'missing'"),
        ("byo_loaders:NOT_CALLABLE", "has no callable 'NOT_CALLABLE'"),
    ],
)
def test_references_that_do_not_resolve_are_config_errors(name, message):
    with pytest.raises(ConfigError, match=message):
        load_user_data(name)


def test_a_loader_is_split_and_partitioned_like_a_file_and_called_once_per_process():
    config = RunConfig(dataset="byo_loaders:blobs", partition="iid", seed=7).replace(
        {"simulation.num-clients": 4}
    )
    before = byo_loaders.CALLS["count"]

    check_scenario_data(config)
    clients = [simulated_client_data(config, partition_id=i, num_partitions=4) for i in range(4)]

    assert len(central_test_data(config)) == 24  # test-fraction 0.2 of 120
    assert sum(len(c.train) + len(c.test) for c in clients) == 96
    assert byo_loaders.CALLS["count"] == before + 1  # cached: the whole set is loaded once


def test_a_declared_public_range_scales_a_loaders_features():
    config = RunConfig(dataset="byo_loaders:pixels", feature_range="0,255", test_fraction=0.4)

    central = central_test_data(config)

    assert central.x.min() >= -1.0 and central.x.max() <= 1.0  # 300 is clipped to 255 -> 1
    assert set(np.round(central.x.ravel(), 3)) <= {-1.0, -0.6, 1.0}


def test_a_range_table_does_not_apply_to_a_loader():
    with pytest.raises(ConfigError, match="a feature-range table names file columns"):
        RunConfig(dataset="byo_loaders:pixels", feature_range="ranges.csv")


def test_a_loader_function_is_passed_by_its_import_name():
    assert loader_reference(byo_loaders.blobs) == "byo_loaders:blobs"
    assert loader_reference("pkg.mod:load") == "pkg.mod:load"
    with pytest.raises(ConfigError, match="cannot be imported by name"):
        loader_reference(lambda: None)
