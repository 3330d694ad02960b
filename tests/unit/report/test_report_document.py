"""`fedsys report`: PNG plots, report.md and report.json from fake run directories."""

import json

import pytest
from report_builders import round_record, spend, write_run
from typer.testing import CliRunner

from fedsys.cli import app
from fedsys.report.document import key_numbers, write_report
from fedsys.report.runs import load_run, load_runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SINGLE_RUN_PLOTS = {"accuracy.png", "loss.png", "epsilon.png", "participation.png"}


def _private_run(path):
    run_dir = write_run(path, [round_record(r) for r in (1, 2, 3)])
    for client in range(3):
        spend(run_dir / "ledgers" / f"client-{client:05d}.sqlite", [1, 2, 3][client:])
    return run_dir


def _is_png(path):
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_one_run_gives_four_plots_and_a_report_embedding_them(tmp_path):
    run = load_run(_private_run(tmp_path / "dp"))

    report = write_report([run], tmp_path / "out")

    assert {p.name for p in report.plots} == SINGLE_RUN_PLOTS
    assert all(_is_png(p) for p in report.plots)
    text = report.markdown.read_text()
    assert all(f"]({name})" in text for name in SINGLE_RUN_PLOTS)
    assert "privacy-utility.png" not in text


def test_several_runs_add_the_privacy_utility_plot(tmp_path):
    plain = write_run(tmp_path / "plain", [round_record(1)], dp=False)
    runs = load_runs([_private_run(tmp_path / "dp"), plain])

    report = write_report(runs, tmp_path / "out")

    assert {p.name for p in report.plots} == SINGLE_RUN_PLOTS | {"privacy-utility.png"}
    assert _is_png(tmp_path / "out" / "privacy-utility.png")


def test_a_non_private_run_has_no_epsilon_plot(tmp_path):
    runs = [load_run(write_run(tmp_path / "plain", [round_record(1), round_record(2)], dp=False))]

    report = write_report(runs, tmp_path / "out")

    assert {p.name for p in report.plots} == {"accuracy.png", "loss.png", "participation.png"}
    assert "∞ (no DP)" in report.markdown.read_text()


def test_report_json_holds_the_table_numbers(tmp_path):
    run = load_run(_private_run(tmp_path / "dp"))

    report = write_report([run], tmp_path / "out")

    (row,) = json.loads(report.numbers.read_text())["runs"]
    assert row == json.loads(json.dumps(key_numbers(run)))
    assert row["final-accuracy"] == pytest.approx(0.6)
    assert row["final-epsilon"] == run.final_epsilon()
    assert row["epsilon-source"] == "ledger"
    assert row["updates"] == "9 / 1 / 2"
    assert f"{100 * 0.6:.2f}%" in report.markdown.read_text()


def test_cli_report_writes_into_out_and_prints_the_report_path(tmp_path):
    run_dir = _private_run(tmp_path / "dp")

    result = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "out")])

    assert result.exit_code == 0, result.output
    assert str(tmp_path / "out" / "report.md") in result.output
    assert (tmp_path / "out" / "epsilon.png").is_file()


def test_cli_report_defaults_to_a_report_folder_inside_a_single_run(tmp_path):
    run_dir = write_run(tmp_path / "plain", [round_record(1)], dp=False)

    result = CliRunner().invoke(app, ["report", str(run_dir)])

    assert result.exit_code == 0, result.output
    assert (run_dir / "report" / "report.md").is_file()


def test_cli_report_on_a_folder_that_is_no_run_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])

    assert result.exit_code == 2
    assert "not a run directory" in result.output


@pytest.mark.parametrize(
    ("simulated", "floor", "shown"),
    [(True, 4.0, True), (True, 0.0, False), (False, 4.0, False)],  # deployed: each holder's own floor
)
def test_a_distributed_run_names_its_simulated_holders_local_floor(tmp_path, simulated, floor, shown):
    run_dir = write_run(
        tmp_path / "run",
        [round_record(1)],
        summary={"simulated": simulated},
        **{"dp.mode": "distributed", "dp.noise-multiplier": 15.0, "dp.local-noise-multiplier": floor},
    )

    cell = key_numbers(load_run(run_dir))["dp"]

    assert cell.startswith("distributed, aggregate σ 15") and "16-bit ring" in cell
    assert ("local floor σ 4" in cell) is shown
