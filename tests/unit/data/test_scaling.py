"""Feature scaling uses declared public ranges only: no record changes how another is scaled."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsys.config import RunConfig, parse_feature_range
from fedsys.data import ArrayDataset, ClientData, holder_client_data, simulated_client_data
from fedsys.data.builtin import BREAST_CANCER_RANGES
from fedsys.data.scaling import FeatureBounds, scale, uniform_bounds
from fedsys.errors import ConfigError, DataError
from fedsys.models import MODELS, build_model, to_arrays
from fedsys.training import train_plain

OUTLIER = 1e6


def _holder_csv(path: Path, *, first_a: float | None = None) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.uniform(0, 10, 40), "b": rng.uniform(0, 10, 40), "y": [0, 1] * 20})
    if first_a is not None:
        frame.loc[0, "a"] = first_a
    frame.to_csv(path, index=False)
    return path


def _holder(path: Path, text: str = "0,10") -> ClientData:
    declared = parse_feature_range(text, key="feature-range")
    return holder_client_data(path, label_column="y", num_classes=2, feature_range=declared)


def _rows_changed(clean: np.ndarray, poisoned: np.ndarray) -> int:
    return int(np.any(~np.isclose(clean, poisoned, rtol=0, atol=1e-6), axis=1).sum())


def test_one_outlier_record_does_not_rescale_any_other_record(tmp_path):
    clean = _holder(_holder_csv(tmp_path / "clean.csv"))
    poisoned = _holder(_holder_csv(tmp_path / "poisoned.csv", first_a=OUTLIER))

    changed = _rows_changed(clean.train.x, poisoned.train.x) + _rows_changed(clean.test.x, poisoned.test.x)

    assert changed == 1  # only the outlier's own row (old code: all 40 rows, via the mean/std)


def _trained_weights(data: ClientData) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    model = build_model("logreg", data.train.feature_shape, 2)
    train_plain(
        model,
        data.train,
        lr=0.1,
        momentum=0.0,
        batch_size=8,
        steps=20,
        proximal_mu=0.0,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(1),
    )
    return to_arrays(model)


def test_an_outlier_moves_the_update_no_more_than_an_in_range_value(tmp_path):
    capped = _holder(_holder_csv(tmp_path / "capped.csv", first_a=10.0))
    poisoned = _holder(_holder_csv(tmp_path / "poisoned.csv", first_a=OUTLIER))

    a, b = _trained_weights(capped), _trained_weights(poisoned)

    for name in a:  # the outlier is clipped to the declared bound: the training is identical
        np.testing.assert_array_equal(a[name], b[name])


@given(
    x=arrays(np.float32, (6, 3), elements=st.floats(-(2.0**20), 2.0**20, width=32)),
    row=st.integers(0, 5),
    replacement=arrays(np.float32, 3, elements=st.floats(-(2.0**100), 2.0**100, width=32)),
)
def test_each_scaled_record_depends_on_that_record_only(x, row, replacement):
    bounds = FeatureBounds(np.array([-5.0, 0.0, 100.0]), np.array([5.0, 1.0, 200.0]))
    changed = x.copy()
    changed[row] = replacement

    a = scale(ArrayDataset(x, np.zeros(6, np.int64), 2), bounds).x
    b = scale(ArrayDataset(changed, np.zeros(6, np.int64), 2), bounds).x

    others = np.arange(6) != row
    np.testing.assert_array_equal(a[others], b[others])
    assert np.all(np.abs(b) <= 1.0)


def test_models_hold_trained_parameters_only_and_no_data_statistics():
    for name in MODELS:
        shape = (1, 8, 8) if name.endswith("cnn") else (30,)
        model = build_model(name, shape, 2)

        params = {k for k, _ in model.named_parameters()}

        assert set(model.state_dict()) == params, name  # no buffers (mean/std/...) to ship
        assert set(to_arrays(model)) == params, name


def test_client_data_of_a_holder_is_scaled_rows_only(tmp_path):
    data = _holder(_holder_csv(tmp_path / "site.csv"))

    assert set(vars(data)) == {"train", "test"}
    for part in (data.train, data.test):
        assert set(vars(part)) == {"x", "y", "num_classes"}
        assert part.x.min() >= -1.0 and part.x.max() <= 1.0


def test_a_file_without_a_declared_range_is_a_config_error_naming_the_choices(tmp_path):
    path = _holder_csv(tmp_path / "site.csv")

    with pytest.raises(ConfigError, match=r'no feature-range declared for .*site.csv.*"none"'):
        holder_client_data(path, label_column="y", num_classes=2, feature_range=None)


def test_none_uses_the_values_as_given(tmp_path):
    path = _holder_csv(tmp_path / "site.csv", first_a=OUTLIER)

    data = _holder(path, "none")

    assert OUTLIER in np.concatenate([data.train.x, data.test.x])


def test_a_range_table_names_orders_and_bounds_the_columns(tmp_path):
    path = _holder_csv(tmp_path / "site.csv")
    table = tmp_path / "ranges.csv"
    table.write_text("column,low,high\nb,0,10\na,0,20\n")

    data = _holder(path, str(table))
    raw = pd.read_csv(path)

    both = np.concatenate([data.train.x, data.test.x])
    expected = np.stack([raw["b"] / 5 - 1, raw["a"] / 10 - 1], axis=1)
    assert np.allclose(np.sort(both, axis=0), np.sort(expected, axis=0), atol=1e-6)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("column,low,high\na,0,10\na,0,10\n", "names column.s. twice: a"),
        ("column,low,high\na,10,0\n", r"low < high, violated at feature\(s\) \[0\]"),
        ("name,min,max\na,0,1\n", "needs a header column,low,high"),
        ("column,low,high\nzz,0,1\n", "lacks feature column.s. zz"),
    ],
)
def test_bad_range_tables_are_data_errors_that_say_why(tmp_path, table, message):
    path = _holder_csv(tmp_path / "site.csv")
    (tmp_path / "ranges.csv").write_text(table)

    with pytest.raises(DataError, match=message):
        _holder(path, str(tmp_path / "ranges.csv"))


@pytest.mark.parametrize("text", ["1", "0,1,2", "a,b", "5,5", "0,inf", "zero,one"])
def test_bad_declared_ranges_echo_the_value(text):
    with pytest.raises(ConfigError, match=repr(text).replace("(", r"\(")):
        RunConfig(dataset="site.csv", feature_range=text)


def test_built_in_data_sets_carry_their_own_range():
    with pytest.raises(ConfigError, match="built-in 'breast-cancer' carries its own public range"):
        RunConfig(dataset="breast-cancer", feature_range="0,1")


def test_breast_cancer_is_scaled_by_its_documented_ranges_not_its_rows():
    from sklearn.datasets import load_breast_cancer

    from fedsys.data.builtin import load_breast_cancer as load_scaled

    raw = load_breast_cancer().data
    low, high = np.asarray(BREAST_CANCER_RANGES).T

    expected = 2 * (np.clip(raw, low, high) - low) / (high - low) - 1
    assert np.allclose(load_scaled().x, expected, atol=1e-6)
    assert len(BREAST_CANCER_RANGES) == raw.shape[1]


def test_simulated_tabular_clients_share_the_public_scaling():
    config = RunConfig(dataset="breast-cancer")
    clients = [simulated_client_data(config, partition_id=i, num_partitions=3) for i in range(3)]

    rows = np.concatenate([c.train.x for c in clients] + [c.test.x for c in clients])
    assert rows.min() >= -1.0 and rows.max() <= 1.0
    assert not np.allclose(clients[0].train.x.mean(axis=0), 0, atol=1e-3)  # nothing fitted per client


def test_uniform_bounds_apply_to_images_too():
    images = ArrayDataset(np.array([[[[0.0, 255.0], [300.0, -4.0]]]], np.float32), np.zeros(1, np.int64), 2)

    assert scale(images, uniform_bounds(0, 255)).x.ravel().tolist() == [-1.0, 1.0, 1.0, -1.0]


def test_a_real_holder_scales_with_its_own_declaration_not_the_servers(tmp_path):
    from flwr.common.config import parse_config_args

    from fedsys.deploy.client import ClientOptions, node_config
    from fedsys.node.settings import holder_settings
    from fedsys.node.update import local_data

    path = _holder_csv(tmp_path / "site.csv")
    options = ClientOptions(
        superlink="h:1",
        ca_cert=None,
        key=None,
        data=path,
        label_column="y",
        max_epsilon=8.0,
        target_delta=1e-5,
        ledger=tmp_path / "ledger.sqlite",
        home=tmp_path,
        approved=[],
        num_classes=2,
        feature_range="0,10",
    )
    server = RunConfig(dataset="server-side.csv", feature_range="0,1000")

    settings = holder_settings(parse_config_args([node_config(options)]), server)
    data = local_data(server, settings)

    assert data.train.x.min() < -0.5 and data.train.x.max() > 0.5  # 0..10 -> [-1, 1], not 0..1000
    assert data.train.x.ravel().tolist() == _holder(path).train.x.ravel().tolist()
