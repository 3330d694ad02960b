"""The ledger with distributed-DP rounds: stored, composed with local DP-SGD, never under-counted."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from fedsys.errors import BudgetExceededError
from fedsys.privacy import PrivacyLedger
from fedsys.privacy.accounting import compute_epsilon, extend_history, gaussian_part, normalize_history
from fedsys.privacy.distributed import SkellamSegment, epsilon_of
from fedsys.privacy.settings import LocalBudget

SEGMENT = SkellamSegment(mu=2.0e5, l1=6000.0, l2=190.0, sample_rate=0.2, steps=1)
BUDGET = LocalBudget(max_epsilon=5.0, target_delta=1e-5, policy="refuse", accountant="rdp")


def _reserve_round(ledger: PrivacyLedger, rnd: int, segment: SkellamSegment = SEGMENT) -> float:
    reservation = ledger.reserve_distributed_round(
        budget_key="default", fingerprint="f", run_id="r", server_round=rnd, segment=segment, budget=BUDGET
    )
    ledger.commit(reservation.entry_id, actual_steps=1, epsilon_after=reservation.epsilon_after)
    return reservation.epsilon_after


def _reserve_steps(ledger: PrivacyLedger, steps: int) -> None:
    reservation = ledger.reserve_within_budget(
        budget_key="default",
        fingerprint="f",
        run_id="r",
        server_round=0,
        noise_multiplier=1.5,
        sample_rate=0.1,
        steps=steps,
        budget=BUDGET,
    )
    ledger.commit(reservation.entry_id, actual_steps=steps, epsilon_after=reservation.epsilon_after)


def test_distributed_rounds_are_stored_merged_and_charged_as_the_accountant_says(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "l.sqlite", create=True) as ledger:
        epsilons = [_reserve_round(ledger, rnd) for rnd in (1, 2, 3)]
        history = ledger.history("default")
        entries = ledger.entries("default")
    assert history == [replace(SEGMENT, steps=3)]
    assert epsilons == sorted(epsilons) and epsilons[0] > 0
    assert epsilons[-1] == pytest.approx(epsilon_of([], [replace(SEGMENT, steps=3)], 1e-5), rel=1e-12)
    assert {e.mechanism for e in entries} == {"skellam"}
    assert (entries[0].skellam_mu, entries[0].skellam_l1, entries[0].skellam_l2) == (2.0e5, 6000.0, 190.0)


def test_local_and_distributed_spending_on_one_data_set_compose_and_neither_is_lost(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "l.sqlite", create=True) as ledger:
        _reserve_steps(ledger, 20)
        _reserve_round(ledger, 1)
        _reserve_steps(ledger, 10)
        history = ledger.history("default")
    gaussian = [(1.5, 0.1, 30)]
    both = epsilon_of(gaussian, [SEGMENT], 1e-5)
    assert gaussian_part(history) == gaussian
    assert compute_epsilon(history, target_delta=1e-5, accountant="rdp") == pytest.approx(both, rel=1e-12)
    assert both > compute_epsilon(gaussian, target_delta=1e-5, accountant="rdp")
    assert both > epsilon_of([], [SEGMENT], 1e-5)


def test_a_round_beyond_the_budget_is_refused_whatever_the_policy(tmp_path: Path) -> None:
    heavy = replace(SEGMENT, mu=2.0e3)  # ~ noise multiplier 0.33: one round is already too much
    with PrivacyLedger(tmp_path / "l.sqlite", create=True) as ledger:
        for policy in ("refuse", "truncate"):
            with pytest.raises(BudgetExceededError, match="distributed-DP round"):
                ledger.reserve_distributed_round(
                    budget_key="default",
                    fingerprint="f",
                    run_id="r",
                    server_round=1,
                    segment=heavy,
                    budget=replace(BUDGET, policy=policy),
                )
        assert ledger.history("default") == []


def test_an_open_distributed_reservation_counts_until_it_is_committed(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "l.sqlite", create=True) as ledger:
        ledger.reserve_distributed_round(
            budget_key="default", fingerprint="f", run_id="r", server_round=1, segment=SEGMENT, budget=BUDGET
        )
        assert ledger.history("default") == [SEGMENT]
        assert ledger.summary()[0].epsilon == pytest.approx(epsilon_of([], [SEGMENT], 1e-5))


def test_a_schema_2_ledger_migrates_with_every_entry_kept_as_gaussian(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with PrivacyLedger(path, create=True) as ledger:
        _reserve_steps(ledger, 7)
    with sqlite3.connect(path) as conn:  # rebuild the file as schema 2 wrote it
        conn.execute(
            "CREATE TABLE old AS SELECT id, budget_key, fingerprint, run_id, round, noise_multiplier, "
            "sample_rate, steps, planned_steps, accountant, target_delta, epsilon_before, epsilon_after, "
            "status, reserved_at, committed_at FROM entries"
        )
        conn.execute("DROP TABLE entries")
        conn.execute("ALTER TABLE old RENAME TO entries")
        conn.execute("PRAGMA user_version = 2")
    with PrivacyLedger(path) as ledger:
        assert ledger.history("default") == [(1.5, 0.1, 7)]
        _reserve_round(ledger, 1)
        assert [e.mechanism for e in ledger.entries("default")] == ["gaussian", "skellam"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3


def test_the_table_refuses_a_skellam_row_without_its_parameters(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with PrivacyLedger(path, create=True) as ledger:
        _reserve_round(ledger, 1)
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE entries SET skellam_mu = NULL")


def test_histories_merge_only_equal_segments_of_the_same_mechanism() -> None:
    merged = normalize_history([(1.0, 0.1, 2), SEGMENT, SEGMENT, (1.0, 0.1, 3), replace(SEGMENT, mu=1.0e5)])
    assert merged == [(1.0, 0.1, 2), replace(SEGMENT, steps=2), (1.0, 0.1, 3), replace(SEGMENT, mu=1.0e5)]
    assert extend_history([SEGMENT], noise_multiplier=1.0, sample_rate=0.1, steps=1)[-1] == (1.0, 0.1, 1)
    assert gaussian_part(merged) == [(1.0, 0.1, 5)]
