"""`fedsys demo deploy`'s preparation: options, holder data, the holders' flags, example scenarios."""

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedsys.cli import app, load_scenario
from fedsys.data.files import load_file
from fedsys.deploy.demo import SCENARIO, DemoOptions, _client_argv, check_options, write_digits_partitions
from fedsys.deploy.runs import deployment_config
from fedsys.deploy.server import ServerOptions, proxy_argv
from fedsys.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (DemoOptions(holders=4), "--holders must be 2 or 3, got 4"),
        (DemoOptions(rounds=0), "--rounds must be in 1..50, got 0"),
        (DemoOptions(scenario=Path("/nonexistent.toml")), "the demo scenario /nonexistent.toml is missing"),
    ],
)
def test_bad_demo_options_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        check_options(options)


def test_a_non_empty_out_directory_is_refused_by_the_command(tmp_path):
    (tmp_path / "something").touch()

    result = CliRunner().invoke(app, ["demo", "deploy", "--out", str(tmp_path)])

    assert result.exit_code == 2 and "is not empty" in result.output and "Traceback" not in result.output


def test_holder_partitions_are_disjoint_and_cover_the_digits(tmp_path):
    paths = [tmp_path / f"h{i}" / "digits.csv" for i in range(3)]

    write_digits_partitions(paths)

    frames = [pd.read_csv(p) for p in paths]
    assert sum(len(f) for f in frames) == 1797 and all(abs(len(f) - 599) <= 1 for f in frames)
    assert all(list(f.columns) == [f"pixel{j}" for j in range(64)] + ["y"] for f in frames)
    loaded = load_file(paths[0], label_column="y", num_classes=10)  # as a holder's node reads it
    assert loaded.x.shape[1:] == (64,)  # the example scenario's feature-shape = "64"
    values = pd.concat(frames).drop(columns="y").to_numpy()
    assert values.min() >= 0 and values.max() <= 16  # within the declared --feature-range 0,16


def test_holders_allow_plaintext_only_for_a_plaintext_demo(tmp_path):
    secure = _client_argv("fedsys", DemoOptions(secagg=True), tmp_path, "127.0.0.1:1", tmp_path)
    plain = _client_argv("fedsys", DemoOptions(secagg=False), tmp_path, "127.0.0.1:1", tmp_path)

    assert "--allow-plaintext" not in secure and "--allow-plaintext" in plain
    assert secure[secure.index("--min-cohort") + 1] == "2" and plain[plain.index("--min-cohort") + 1] == "1"
    assert secure[secure.index("--feature-range") + 1] == "0,16"  # digits' documented range
    assert "--insecure" not in secure and "--ca" in secure and "--key" in secure


@pytest.mark.parametrize("name", ["deploy-digits.toml", "deploy-breast-cancer.toml"])
def test_deployment_examples_are_complete_server_scenarios(name, tmp_path):
    config = load_scenario(ROOT / "simulations" / name, {}, [])

    final = deployment_config(config, run_dir=tmp_path / "runs" / "x", resume=False)

    assert final.dataset == "node" and final.feature_shape and final.num_classes >= 2
    assert final.secagg.enabled and final.dp.enabled


def test_the_demo_runs_the_shipped_example():
    assert SCENARIO == ROOT / "simulations" / "deploy-digits.toml"


def test_the_proxy_hold_reaches_the_proxy_command():
    options = ServerOptions(certs=None, state=Path("s"), insecure=True, local_port=5, pull_hold=0.0)

    argv = proxy_argv(options)

    assert argv[argv.index("--pull-hold") + 1] == "0.0"
    assert "--pull-hold" not in proxy_argv(
        ServerOptions(certs=None, state=Path("s"), insecure=True, local_port=5)
    )


def test_the_summary_line_reports_the_runs_final_accuracy(tmp_path):
    from fedsys.deploy.demo import _summary_line

    (tmp_path / "summary.json").write_text('{"rounds-completed": 2, "final-accuracy": 0.8916}')

    assert _summary_line(tmp_path) == "2 rounds completed; final accuracy 0.892 (evaluated at the holders)"
    assert "no summary.json" in _summary_line(tmp_path / "missing")
