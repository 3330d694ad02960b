import pandas as pd
import pytest
from typer.testing import CliRunner

from fedsys.cli import app
from fedsys.errors import ConfigError

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--num-clients", "0"], "simulation.num-clients must be >= 1, got 0"),
        (
            ["simulate", "--partition", "dirichlet"],
            "partition must be iid, natural, dirichlet:ALPHA or shards:K",
        ),
        (["simulate", "--set", "dp.nosie-multiplier=1"], "unknown config key 'dp.nosie-multiplier'"),
        (["simulate", "--set", "novalue"], "--set wants KEY=VALUE, got 'novalue'"),
        (["simulate", "--dataset", "breast-cancer", "--num-clients", "500"], "too small for 500 clients"),
        (
            ["simulate", "--model", "resnet"],
            "model must be one of logreg, mlp, cnn, tanh-mlp, tanh-cnn, lstm, transformer, got 'resnet'",
        ),
        (["simulate", "--resume"], "--resume needs --out RUN_DIR"),
        (["simulate", "--dataset", "no_such_pkg.data:load"], "cannot import 'no_such_pkg.data'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    result = runner.invoke(app, args)

    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 3  # one message (wrapped at most twice)


def test_csv_without_label_column_is_named(tmp_path):
    path = tmp_path / "site.csv"
    pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [0, 1, 0, 1]}).to_csv(path, index=False)

    result = runner.invoke(app, ["simulate", "--dataset", str(path), "--num-clients", "2"])

    assert result.exit_code == 2
    assert "no label column 'label'" in result.output


def test_debug_shows_the_exception():
    result = runner.invoke(app, ["--debug", "simulate", "--num-clients", "0"])

    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)


def test_help_explains_every_command():
    result = runner.invoke(app, ["--help"])

    assert result.exit_code == 0
    assert "simulate" in result.output
    sub = runner.invoke(app, ["simulate", "--help"])
    assert sub.exit_code == 0 and "Precedence" in sub.output and "--num-clients" in sub.output
