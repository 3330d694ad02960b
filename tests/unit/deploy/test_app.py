"""The fedsys Flower app bundle: reproducible, complete run config, hash checks."""

import io
import zipfile

import pytest
from flwr.common.config import flatten_dict, fuse_dicts

from fedsys.config import RunConfig
from fedsys.deploy.app import app_pyproject, build_app, check_fab_hash, stage_app
from fedsys.errors import DeploymentError


def test_the_bundle_is_reproducible_and_holds_only_the_app_packages():
    first, second = build_app(), build_app()

    assert first.fab == second.fab and len(first.fab_hash) == 64
    names = zipfile.ZipFile(io.BytesIO(first.fab)).namelist()
    assert {"pyproject.toml", "server/app.py", "clients/app.py", "fedsys/config.py"} <= set(names)
    assert all(
        n.split("/")[0] in {"pyproject.toml", ".info", "fedsys", "server", "clients", "simulations"}
        for n in names
    )
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)


def test_every_run_config_key_can_be_overridden_by_flwr_run():
    declared = flatten_dict(app_pyproject()["tool"]["flwr"]["app"]["config"])
    scenario = RunConfig().replace({"dataset": "node", "dp.noise-multiplier": 1.3}).to_flat()

    fused = fuse_dicts(declared, scenario, check_keys=True)  # raises on an undeclared key

    assert set(fused) == set(RunConfig().to_flat())
    assert RunConfig.from_mapping(fused).dp.noise_multiplier == 1.3


def test_staged_app_rebuilds_to_the_same_hash(tmp_path):
    bundle = stage_app(tmp_path / "app")

    assert bundle.fab_hash == build_app().fab_hash
    assert (tmp_path / "app" / "pyproject.toml").is_file()


def test_fab_hashes_are_checked():
    assert check_fab_hash(" " + "AB" * 32 + "\n") == "ab" * 32
    with pytest.raises(DeploymentError, match="64 hexadecimal digits"):
        check_fab_hash("abc123")
