"""The simulation harness' quiet defaults and its own Ray session folder (no Ray started here)."""

import logging
import os
import warnings

from fedsys.config import RunConfig
from simulations.harness import (
    RAY_GPU_NOTICE,
    RUN_SIMULATION_NOTICE,
    backend_config,
    quiet_engine,
    ray_session_dir,
)


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _notices(*, verbose):
    flwr_log = logging.getLogger("flwr")
    handler = _Lines()
    flwr_log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet_engine(verbose=verbose):
                flwr_log.warning("DEPRECATED FEATURE: %s and will be removed", RUN_SIMULATION_NOTICE)
                flwr_log.warning("no nodes available")
                warnings.warn(f"{RAY_GPU_NOTICE}, Ray will no longer override", FutureWarning, stacklevel=1)
        return handler.lines, [str(w.message) for w in caught]
    finally:
        flwr_log.removeHandler(handler)


def test_flower_and_ray_notices_are_hidden_without_verbose_but_other_warnings_show():
    lines, warned = _notices(verbose=False)

    assert lines == ["no nodes available"]
    assert warned == []


def test_verbose_shows_flower_and_ray_notices():
    lines, warned = _notices(verbose=True)

    assert any(RUN_SIMULATION_NOTICE in line for line in lines)
    assert any(RAY_GPU_NOTICE in w for w in warned)


def test_flower_records_are_not_printed_twice_through_the_root_logger():
    flwr_log = logging.getLogger("flwr")
    before = flwr_log.propagate, flwr_log.level

    with quiet_engine(verbose=False):
        assert flwr_log.propagate is False  # Opacus' basicConfig gave the root logger a handler

    assert (flwr_log.propagate, flwr_log.level) == before


def test_a_ray_that_fedsys_starts_keeps_its_session_in_a_folder_removed_afterwards():
    config = RunConfig()

    with ray_session_dir(config) as folder:
        assert folder is not None and folder.is_dir()
        assert folder.name.startswith(f"fedsys-ray-{os.getpid()}-")
        assert backend_config(config, ray_temp_dir=folder)["init_args"]["_temp_dir"] == str(folder)
        (folder / "session_x" / "logs").mkdir(parents=True)

    assert not folder.exists()


def test_an_existing_ray_cluster_keeps_its_own_files():
    config = RunConfig().replace({"simulation.ray-address": "127.0.0.1:6379"})

    with ray_session_dir(config) as folder:
        assert folder is None
        assert "_temp_dir" not in backend_config(config, ray_temp_dir=folder)["init_args"]
