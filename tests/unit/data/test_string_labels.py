"""String labels: mapped in the order the scenario declares them, never in an order read from the data."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fedsys.cli import app
from fedsys.config import RunConfig
from fedsys.data import load_file
from fedsys.data.federated import central_test_data, check_scenario_data
from fedsys.data.text import load_text_file
from fedsys.errors import ConfigError, DataError

LABELS = ("malignant", "benign")  # deliberately not alphabetical


def _csv(tmp_path, labels, name="site.csv"):
    path = tmp_path / name
    n = len(labels)
    pd.DataFrame({"a": np.arange(n, dtype=float), "b": np.ones(n), "label": labels}).to_csv(path, index=False)
    return path


def test_labels_map_to_classes_in_the_declared_order(tmp_path):
    path = _csv(tmp_path, ["benign", "malignant", "benign", "benign"])

    data = load_file(path, labels=LABELS)

    assert data.y.tolist() == [1, 0, 1, 1]
    assert data.num_classes == 2


def test_a_declared_label_absent_from_this_file_still_counts_as_a_class(tmp_path):
    path = _csv(tmp_path, ["b", "b", "a", "a"])

    data = load_file(path, labels=("a", "b", "c"))

    assert data.y.tolist() == [1, 1, 0, 0] and data.num_classes == 3


def test_digit_strings_are_read_as_written_not_as_numbers(tmp_path):
    path = _csv(tmp_path, ["01", "1", "01", "1"])

    assert load_file(path, labels=("1", "01")).y.tolist() == [1, 0, 1, 0]


def test_parquet_and_npz_string_labels(tmp_path):
    parquet = tmp_path / "site.parquet"
    pd.DataFrame({"a": [0.0, 1.0, 2.0], "label": ["benign", "malignant", "benign"]}).to_parquet(parquet)
    npz = tmp_path / "site.npz"
    np.savez(npz, x=np.zeros((3, 2)), y=np.array(["benign", "benign", "malignant"]))

    assert load_file(parquet, labels=LABELS).y.tolist() == [1, 0, 1]
    assert load_file(npz, labels=LABELS).y.tolist() == [1, 1, 0]


def test_an_undeclared_label_is_one_line_naming_it_and_its_row_count_only(tmp_path):
    path = _csv(tmp_path, ["benign", "Benign", "cyst", "Benign", "malignant"])

    with pytest.raises(DataError) as err:
        load_file(path, labels=LABELS)

    message = str(err.value)
    assert (
        "label 'Benign' (2 row(s)) is not among the 2 declared labels; 1 other undeclared value(s)" in message
    )
    assert "cyst" not in message and "\n" not in message


def test_a_missing_label_is_counted(tmp_path):
    path = tmp_path / "site.csv"
    path.write_text("a,label\n1,benign\n2,\n3,malignant\n")

    with pytest.raises(DataError, match=r"1 row\(s\) have no label"):
        load_file(path, labels=LABELS)


def test_text_labels_without_a_declared_set_say_how_to_declare_them(tmp_path):
    path = _csv(tmp_path, ["benign", "malignant", "benign"])
    npz = tmp_path / "site.npz"
    np.savez(npz, x=np.zeros((3, 2)), y=np.array(["a", "b", "a"]))

    with pytest.raises(
        DataError, match=r"label column 'label' holds text; declare the label set in the scenario"
    ):
        load_file(path)
    with pytest.raises(DataError, match="labels are text; declare the label set"):
        load_file(npz)


def test_text_data_set_with_string_labels(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"review": ["good", "bad", "fine"], "label": ["pos", "neg", "pos"]}).to_csv(
        path, index=False
    )

    data = load_text_file(path, text_column="review", max_length=8, labels=("neg", "pos"))

    assert data.y.tolist() == [1, 0, 1]
    with pytest.raises(DataError, match="declare the label set"):
        load_text_file(path, text_column="review", max_length=8)


def _scenario(path, **extra):
    return RunConfig().replace(
        {
            "dataset": str(path),
            "feature-range": "none",
            "simulation.num-clients": 2,
            "partition": "iid",
            **extra,
        }
    )


def test_the_scenario_declares_labels_and_they_reach_every_simulated_holder(tmp_path):
    path = _csv(tmp_path, ["benign", "malignant"] * 20)
    config = _scenario(path, labels=list(LABELS))

    check_scenario_data(config)
    central = central_test_data(config)
    holder_view = RunConfig.from_mapping(config.to_flat())  # what a node parses from the round config

    assert central.num_classes == 2 and set(central.y.tolist()) <= {0, 1}
    assert holder_view.labels == LABELS
    assert RunConfig.from_mapping(config.to_mapping()).labels == LABELS  # config.toml round-trip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"labels": ["a"]}, "labels must be two or more distinct, non-empty strings"),
        ({"labels": ["a", "a"]}, "labels must be two or more distinct"),
        ({"labels": ["a", 1]}, "labels must be a list of strings"),
        ({"labels": ["a", "b"], "num-classes": 3}, "num-classes is 3 but labels declares 2 labels"),
    ],
)
def test_bad_label_declarations_are_config_errors(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        _scenario(tmp_path / "site.csv", **extra)


def test_labels_apply_only_to_data_files():
    with pytest.raises(ConfigError, match="labels applies to a .csv, .parquet or .npz dataset file"):
        RunConfig().replace({"labels": ["a", "b"]})


def test_cli_rejects_undeclared_string_labels_in_one_line(tmp_path):
    path = _csv(tmp_path, ["benign", "malignant"] * 20)

    result = CliRunner().invoke(
        app, ["simulate", "--dataset", str(path), "--num-clients", "2", "--set", 'feature-range="none"']
    )

    assert result.exit_code == 2
    assert "holds text; declare the label set in the scenario" in result.output
    assert "Traceback" not in result.output
