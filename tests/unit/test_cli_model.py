from typer.testing import CliRunner

import simulations.harness
from fedsys.cli import app

runner = CliRunner()


def test_a_model_dp_sgd_cannot_train_fails_in_one_line_before_ray_starts(tmp_path):
    out = tmp_path / "run"

    result = runner.invoke(
        app,
        [
            "simulate",
            "--model",
            "fixtures_models:bn_net",
            "--num-clients",
            "2",
            "--rounds",
            "1",
            "--out",
            str(out),
        ],
    )

    assert result.exit_code == 2
    assert (
        "error: model 'fixtures_models:bn_net' is not DP-compatible: BatchNorm1d at 'bn' "
        "(BatchNorm cannot support training with differential privacy); use --fix-model" in result.output
    )
    assert "Traceback" not in result.output and "Ray" not in result.output  # no progress bar started
    assert len(result.output.strip().splitlines()) <= 3  # one message (wrapped at most twice)
    assert not out.exists()


def test_fix_model_and_tensorboard_reach_the_run_config(tmp_path, monkeypatch):
    seen = {}

    def fake_run_scenario(config, run_dir, **_):
        seen["config"] = config
        return {"run-dir": str(run_dir), "rounds-completed": 1}

    monkeypatch.setattr(simulations.harness, "run_scenario", fake_run_scenario)

    result = runner.invoke(
        app,
        [
            "simulate",
            "--model",
            "fixtures_models:inplace_bn_cnn",
            "--fix-model",
            "--tensorboard",
            str(tmp_path / "tb"),
            "--num-clients",
            "2",
            "--rounds",
            "1",
            "--out",
            str(tmp_path / "run"),
        ],
    )

    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.model, config.fix_model, config.tensorboard_dir) == (
        "fixtures_models:inplace_bn_cnn",
        True,
        str(tmp_path / "tb"),
    )
