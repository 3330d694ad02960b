"""Supervision: output reaches stdout and the log, children stop together."""

import sys
import time
from pathlib import Path

from fedsys.deploy.process import Supervisor, flower_env

PY = sys.executable


def test_output_is_prefixed_and_logged_and_a_dead_child_stops_the_rest(tmp_path):
    lines = []
    log = tmp_path / "d.log"
    with Supervisor(log, lines.append, grace_seconds=5) as supervisor:
        sleeper = supervisor.start(
            "sleeper", [PY, "-c", "import time; print('up', flush=True); time.sleep(60)"], {}
        )
        supervisor.start(
            "quitter", [PY, "-c", "import time; time.sleep(1); print('bye'); raise SystemExit(3)"], {}
        )
        started = time.monotonic()

        code = supervisor.run_until_exit()

    assert code == 3 and time.monotonic() - started < 30
    assert sleeper.process.poll() is not None
    assert "[sleeper] up" in lines and "[quitter] bye" in lines
    assert "[quitter] exited with code 3; stopping the others" in log.read_text()


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('x', flush=True); time.sleep(60)"
    )
    with Supervisor(tmp_path / "d.log", lambda line: None, grace_seconds=1) as supervisor:
        child = supervisor.start("stubborn", [PY, "-c", code], {})
        time.sleep(1.0)

    assert child.process.returncode == -9


def test_flower_processes_get_their_own_home_and_no_network_lookups(tmp_path):
    env = flower_env(tmp_path / "home")

    assert env["FLWR_HOME"] == str(tmp_path / "home")
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
