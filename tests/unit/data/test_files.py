import numpy as np
import pandas as pd
import pytest

from fedsys.data import load_file
from fedsys.errors import DataError


def _frame(n=20):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "y": rng.integers(0, 3, n)})


def test_csv_loads_features_and_labels(tmp_path):
    path = tmp_path / "site.csv"
    _frame().to_csv(path, index=False)

    data = load_file(path, label_column="y")

    assert data.x.shape == (20, 2) and data.x.dtype == np.float32
    assert data.num_classes == 3


def test_parquet_with_selected_feature_columns(tmp_path):
    path = tmp_path / "site.parquet"
    _frame().to_parquet(path)

    data = load_file(path, label_column="y", feature_columns=["b"])

    assert data.x.shape == (20, 1)


def test_csv_without_label_column_names_it_and_lists_columns(tmp_path):
    path = tmp_path / "site.csv"
    _frame().to_csv(path, index=False)

    with pytest.raises(DataError, match=r"no label column 'target' \(columns: a, b, y\)"):
        load_file(path, label_column="target")


def test_non_numeric_and_missing_values_are_named(tmp_path):
    frame = _frame()
    frame["a"] = frame["a"].astype(object)
    frame.loc[3, "a"] = "oops"
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="column 'a' is not numeric .*'oops'"):
        load_file(path, label_column="y")

    frame = _frame()
    frame.loc[[1, 2], "b"] = np.nan
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="column 'b' has 2 missing value"):
        load_file(path, label_column="y")


def test_malformed_csv_is_a_data_error(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text('a,b,y\n1,2,0\n"unterminated,3,1\n')

    with pytest.raises(DataError):
        load_file(path, label_column="y")


def test_npz_images_get_a_channel_axis(tmp_path):
    path = tmp_path / "imgs.npz"
    np.savez(path, x=np.zeros((6, 5, 5)), y=np.array([0, 1, 0, 1, 0, 1]))

    data = load_file(path)

    assert data.feature_shape == (1, 5, 5)


def test_npz_without_arrays_and_float_labels_are_rejected(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, features=np.zeros((3, 2)))
    with pytest.raises(DataError, match="must hold arrays 'x' and 'y'"):
        load_file(path)
    np.savez(path, x=np.zeros((3, 2)), y=np.array([0.5, 1.0, 0.0]))
    with pytest.raises(DataError, match="integer class indices"):
        load_file(path)


def test_unsupported_suffix_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_file(tmp_path / "none.csv")
    other = tmp_path / "x.xlsx"
    other.write_text("")
    with pytest.raises(DataError, match="unsupported data file type '.xlsx'"):
        load_file(other)
