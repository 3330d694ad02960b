"""`fedsys report` shows the audit's lower bound beside the accountant's epsilon."""

from __future__ import annotations

from pathlib import Path

from fedsys.audit.result import AuditResult
from fedsys.report.document import key_numbers
from fedsys.report.runs import RunData


def _run(path: Path) -> RunData:
    return RunData(path=path, name="r", config={"dp": {"enabled": True}}, records=[], summary={})


def test_lower_bound_is_shown_when_the_run_was_audited(tmp_path: Path) -> None:
    AuditResult(
        epsilon=3.0,
        epsilon_lower_bound=0.4321,
        canaries=298,
        confidence=0.95,
        delta=1e-5,
        guesses=60,
        correct=50,
        attack="peak-alignment",
        attacks=("peak-alignment",),
        setting="federated",
        dp=True,
        seed=None,
        seconds=1.0,
    ).write(tmp_path)

    assert key_numbers(_run(tmp_path))["epsilon-lower-bound"] == "0.432 (95%, m=298)"


def test_no_audit_no_lower_bound(tmp_path: Path) -> None:
    assert key_numbers(_run(tmp_path))["epsilon-lower-bound"] is None
