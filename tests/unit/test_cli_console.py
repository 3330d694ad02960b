"""The command line's output: `--debug` anywhere, and whole lines when the output is piped."""

import io

from typer.testing import CliRunner

from fedsys.cli import app
from fedsys.config import RunConfig
from fedsys.console import FedsysConsole, RoundDisplay
from fedsys.errors import ConfigError

runner = CliRunner()


def test_debug_after_the_subcommand_shows_the_exception():
    result = runner.invoke(app, ["simulate", "--num-clients", "0", "--debug"])

    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)


def test_debug_inside_a_command_group_shows_the_exception(tmp_path):
    result = runner.invoke(app, ["ledger", "show", str(tmp_path / "missing.sqlite"), "--debug"])

    assert result.exception is not None and not isinstance(result.exception, SystemExit)


def test_without_debug_the_error_stays_one_line():
    result = runner.invoke(app, ["simulate", "--num-clients", "0"])

    assert result.exit_code == 2
    assert "No such option" not in result.output


def test_an_argument_after_double_dash_is_not_taken_for_debug():
    result = runner.invoke(app, ["simulate", "--num-clients", "0", "--", "--debug"])

    assert result.exit_code == 2  # an unexpected extra argument, not a traceback
    assert not isinstance(result.exception, ConfigError)


def test_piped_round_lines_are_never_broken_mid_line():
    out = io.StringIO()
    console = FedsysConsole(file=out, width=80)  # a pipe: not a terminal
    config = RunConfig().replace({"dataset": "/a/rather/long/path/to/the/holders/own/data/file.csv"})
    record = {
        "round": 100,
        "accuracy": 0.91234,
        "loss": 0.31234,
        "clients-succeeded": 100,
        "clients-sampled": 100,
        "clients-failed": 0,
        "clients-declined": 0,
        "epsilon-max": 12.5,
        "round-seconds": 123.4,
    }

    with RoundDisplay(console, config) as display:
        display.update(record)

    lines = out.getvalue().splitlines()
    header = next(line for line in lines if line.startswith("fedsys "))
    assert header.endswith("DP-SGD, SecAgg+") and len(header) > 80
    round_line = next(line for line in lines if line.startswith("round 100"))
    assert round_line.endswith("123.4s") and len(round_line) > 80
