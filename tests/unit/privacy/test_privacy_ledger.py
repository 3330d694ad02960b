"""PrivacyLedger: write-ahead reservations, fail-closed spend, persistence, atomic budget checks."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from privacy_builders import open_ledger

from fedsys.errors import BudgetExceededError, ConfigError, LedgerError
from fedsys.privacy import LocalBudget, PrivacyLedger, compute_epsilon, fingerprint_dataset

BUDGET = LocalBudget(max_epsilon=10.0, target_delta=1e-5)
STEP = {"noise_multiplier": 1.0, "sample_rate": 0.1}


def _reserve(
    ledger: PrivacyLedger,
    steps: int,
    *,
    budget_key: str = "fp",
    fingerprint: str = "data-v1",
    budget: LocalBudget = BUDGET,
) -> int:
    reservation = ledger.reserve_within_budget(
        budget_key=budget_key,
        fingerprint=fingerprint,
        run_id="run",
        server_round=1,
        steps=steps,
        budget=budget,
        **STEP,
    )
    return reservation.entry_id


def _epsilon(steps: int) -> float:
    return compute_epsilon([(1.0, 0.1, steps)], target_delta=1e-5, accountant="rdp")


def test_an_uncommitted_reservation_counts_with_its_planned_steps(tmp_path: Path) -> None:
    with open_ledger(tmp_path) as ledger:
        _reserve(ledger, 30)  # the process "dies" here: never committed

    with open_ledger(tmp_path) as reopened:
        assert reopened.history("fp") == [(1.0, 0.1, 30)]
        second = reopened.reserve_within_budget(
            budget_key="fp",
            fingerprint="data-v1",
            run_id="run",
            server_round=2,
            steps=10,
            budget=BUDGET,
            **STEP,
        )
    assert second.epsilon_before == _epsilon(30)
    assert second.epsilon_after == _epsilon(40)


def test_commit_with_fewer_steps_lowers_the_spend(tmp_path: Path) -> None:
    with open_ledger(tmp_path) as ledger:
        entry_id = _reserve(ledger, 30)
        ledger.commit(entry_id, actual_steps=12, epsilon_after=_epsilon(12))

        [entry] = ledger.entries("fp")
        assert (entry.status, entry.steps, entry.planned_steps) == ("committed", 12, 30)
        assert entry.committed_at is not None
        assert ledger.history("fp") == [(1.0, 0.1, 12)]
        assert ledger.summary()[0].epsilon == _epsilon(12)


@pytest.mark.parametrize("actual_steps", [-1, 31])
def test_commit_outside_the_reservation_is_refused(tmp_path: Path, actual_steps: int) -> None:
    with open_ledger(tmp_path) as ledger:
        entry_id = _reserve(ledger, 30)
        with pytest.raises(LedgerError, match=str(actual_steps)):
            ledger.commit(entry_id, actual_steps=actual_steps, epsilon_after=0.0)
        assert ledger.history("fp") == [(1.0, 0.1, 30)]


def test_commit_twice_or_unknown_entry_is_refused(tmp_path: Path) -> None:
    with open_ledger(tmp_path) as ledger:
        entry_id = _reserve(ledger, 5)
        ledger.commit(entry_id, actual_steps=5, epsilon_after=_epsilon(5))
        with pytest.raises(LedgerError, match="already committed"):
            ledger.commit(entry_id, actual_steps=1, epsilon_after=0.0)
        with pytest.raises(LedgerError, match="no entry 999"):
            ledger.commit(999, actual_steps=1, epsilon_after=0.0)


def test_spend_persists_across_reopen_and_accumulates_to_the_budget(tmp_path: Path) -> None:
    granted = 0
    while True:
        with open_ledger(tmp_path) as ledger:  # a fresh process each round
            try:
                entry_id = _reserve(ledger, 50)
            except BudgetExceededError:
                break
            ledger.commit(entry_id, actual_steps=50, epsilon_after=_epsilon(granted + 50))
            granted += 50

    assert granted > 0
    assert _epsilon(granted) <= BUDGET.max_epsilon < _epsilon(granted + 50)


def test_budgets_are_separate_per_declared_data_set(tmp_path: Path) -> None:
    with open_ledger(tmp_path) as ledger:
        _reserve(ledger, 150, budget_key="a")
        with pytest.raises(BudgetExceededError):
            _reserve(ledger, 150, budget_key="a", fingerprint="data-v2")  # new data, same budget
        _reserve(ledger, 150, budget_key="b")

        assert [s.budget_key for s in ledger.summary()] == ["a", "b"]
        assert ledger.history("b") == [(1.0, 0.1, 150)]


def test_refused_reservation_records_nothing_and_echoes_the_numbers(tmp_path: Path) -> None:
    with open_ledger(tmp_path) as ledger:
        with pytest.raises(BudgetExceededError, match=r"max-epsilon 10\.0"):
            _reserve(ledger, 5000)
        assert ledger.entries("fp") == []


def test_truncate_grants_only_what_fits(tmp_path: Path) -> None:
    budget = LocalBudget(max_epsilon=3.0, target_delta=1e-5, policy="truncate")
    with open_ledger(tmp_path) as ledger:
        reservation = ledger.reserve_within_budget(
            budget_key="fp",
            fingerprint="data-v1",
            run_id="run",
            server_round=1,
            steps=5000,
            budget=budget,
            **STEP,
        )

    assert reservation.truncated
    assert 0 < reservation.steps < 5000 and reservation.planned_steps == 5000
    assert reservation.epsilon_after == _epsilon(reservation.steps) <= 3.0 < _epsilon(reservation.steps + 1)


def test_history_is_evaluated_with_the_budgets_own_accountant(tmp_path: Path) -> None:
    with open_ledger(tmp_path) as ledger:
        _reserve(ledger, 5, budget=LocalBudget(max_epsilon=9.0, target_delta=1e-3, accountant="prv"))
        strict = ledger.reserve_within_budget(
            budget_key="fp",
            fingerprint="data-v1",
            run_id="run",
            server_round=2,
            steps=1,
            budget=BUDGET,
            **STEP,
        )
        accountants = [entry.accountant for entry in ledger.entries("fp")]

    assert strict.epsilon_before == _epsilon(5)  # rdp at 1e-5, not what the first entry used
    assert accountants == ["prv", "rdp"]


def test_a_corrupt_file_raises_ledger_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"definitely not sqlite " * 200)

    with pytest.raises(LedgerError, match=str(path)):
        PrivacyLedger(path)


def test_a_foreign_database_raises_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")

    with pytest.raises(LedgerError, match="schema version 0"):
        PrivacyLedger(path)


def _race(
    path: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue[str]
) -> None:
    ledger = PrivacyLedger(path)
    barrier.wait()
    try:
        _reserve(ledger, 150)
        results.put("granted")
    except BudgetExceededError:
        results.put("refused")
    finally:
        ledger.close()


def test_concurrent_reservations_cannot_together_exceed_the_budget(tmp_path: Path) -> None:
    # No epsilon is computed in this process before the fork: the workers' caches start
    # empty, so each spends real time between its read and its insert (the race window).
    path = str(tmp_path / "ledger.sqlite")
    PrivacyLedger(path, create=True).close()
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_race, args=(path, barrier, results)) for _ in range(4)]

    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    outcomes = sorted(results.get(timeout=5) for _ in workers)
    assert _epsilon(150) <= BUDGET.max_epsilon < _epsilon(300)  # room for exactly one
    assert outcomes == ["granted", "refused", "refused", "refused"]
    with PrivacyLedger(path) as ledger:
        assert ledger.history("fp") == [(1.0, 0.1, 150)]


def test_fingerprint_depends_on_dtype_shape_and_bytes() -> None:
    x, y = np.arange(12, dtype=np.float32).reshape(4, 3), np.array([0, 1, 0, 1])
    base = fingerprint_dataset(x, y)

    assert fingerprint_dataset(x.copy(), y.copy()) == base
    assert fingerprint_dataset(x.astype(np.float64), y) != base
    assert fingerprint_dataset(x.reshape(3, 4), y) != base
    assert fingerprint_dataset(x, y[::-1].copy()) != base
    assert fingerprint_dataset(np.asfortranarray(x), y) == base
    with pytest.raises(ConfigError, match="object"):
        fingerprint_dataset(x.astype(object), y)


@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=2, max_side=5)), st.integers(0, 4))
def test_fingerprint_changes_when_any_byte_changes(x: np.ndarray, index: int) -> None:
    y = np.zeros(3, dtype=np.int64)
    flipped = x.copy().reshape(-1).view(np.uint8)
    flipped[index % flipped.size] ^= 1

    assert fingerprint_dataset(flipped.view(np.float32).reshape(x.shape), y) != fingerprint_dataset(x, y)
