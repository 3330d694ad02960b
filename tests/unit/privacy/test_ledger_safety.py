"""The ledger cannot be reset by accident: explicit creation, named budgets, migration, no lock held."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from fedsys.errors import BudgetExceededError, LedgerError
from fedsys.privacy import LocalBudget, PrivacyLedger, compute_epsilon
from fedsys.privacy import ledger as ledger_module

BUDGET = LocalBudget(max_epsilon=10.0, target_delta=1e-5)
STEP = {"noise_multiplier": 1.0, "sample_rate": 0.1}


def _epsilon(steps: int) -> float:
    return compute_epsilon([(1.0, 0.1, steps)], target_delta=1e-5, accountant="rdp")


def _reserve(ledger: PrivacyLedger, steps: int, *, key: str = "default", data: str = "data-v1") -> int:
    reservation = ledger.reserve_within_budget(
        budget_key=key, fingerprint=data, run_id="run", server_round=1, steps=steps, budget=BUDGET, **STEP
    )
    return reservation.entry_id


@pytest.mark.parametrize("content", [None, b""])
def test_a_missing_or_empty_ledger_is_refused_and_not_created(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "ledger.sqlite"
    if content is not None:
        path.write_bytes(content)

    with pytest.raises(LedgerError, match=f"fedsys ledger init {path}"):
        PrivacyLedger.open(path)

    assert (path.read_bytes() if path.exists() else None) == content


def test_create_is_explicit_and_init_never_replaces_a_ledger(tmp_path: Path) -> None:
    simulated, real = tmp_path / "sim.sqlite", tmp_path / "holder" / "ledger.sqlite"
    PrivacyLedger.open(simulated, create=True).close()
    PrivacyLedger.init(real)
    with PrivacyLedger.open(real) as ledger:
        _reserve(ledger, 10)

    with pytest.raises(LedgerError, match="already exists"):
        PrivacyLedger.init(real)
    with PrivacyLedger.open(real) as ledger:
        assert ledger.history("default") == [(1.0, 0.1, 10)]
    assert simulated.is_file()


def test_changed_data_keeps_its_budget_and_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with PrivacyLedger.open(tmp_path / "l.sqlite", create=True) as ledger:
        _reserve(ledger, 150, data="rows-in-order")
        with caplog.at_level(logging.WARNING, logger="fedsys"), pytest.raises(BudgetExceededError):
            _reserve(ledger, 150, data="rows-shuffled")
        changed = ledger.reserve_within_budget(
            budget_key="default",
            fingerprint="rows-shuffled",
            run_id="r",
            server_round=2,
            steps=1,
            budget=BUDGET,
            **STEP,
        )
        same = ledger.reserve_within_budget(
            budget_key="default",
            fingerprint="rows-shuffled",
            run_id="r",
            server_round=3,
            steps=1,
            budget=BUDGET,
            **STEP,
        )
        [total] = ledger.summary()

    assert changed.data_changed and not same.data_changed
    assert changed.epsilon_before == _epsilon(150)
    assert (total.fingerprints, total.data_changed) == (2, True)


_V1_SCHEMA = """
CREATE TABLE entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, fingerprint TEXT NOT NULL, run_id TEXT NOT NULL,
    round INTEGER NOT NULL, noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL, planned_steps INTEGER NOT NULL, accountant TEXT NOT NULL,
    target_delta REAL NOT NULL, epsilon_before REAL NOT NULL, epsilon_after REAL NOT NULL,
    status TEXT NOT NULL, reserved_at TEXT NOT NULL, committed_at TEXT
);
CREATE INDEX entries_by_fingerprint ON entries (fingerprint, id);
PRAGMA user_version = 1;
"""


def _schema_1_ledger(path: Path) -> None:
    """A ledger as fedsys wrote it before budgets had names: two fingerprints of 70 steps each."""
    conn = sqlite3.connect(path)
    conn.executescript(_V1_SCHEMA)
    for fingerprint in ("aaaa", "bbbb"):
        conn.execute(
            "INSERT INTO entries (fingerprint, run_id, round, noise_multiplier, sample_rate, steps, "
            "planned_steps, accountant, target_delta, epsilon_before, epsilon_after, status, reserved_at, "
            "committed_at) VALUES (?, 'old', 1, 1.0, 0.1, 70, 70, 'rdp', 1e-5, 0, 0, 'committed', 't', 't')",
            (fingerprint,),
        )
    conn.commit()
    conn.close()


def test_a_schema_1_ledger_keeps_all_its_spend_for_every_budget(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _schema_1_ledger(path)

    with PrivacyLedger.open(path) as ledger:
        assert ledger.history("default") == ledger.history("clinic-b") == [(1.0, 0.1, 140)]
        with pytest.raises(BudgetExceededError):
            _reserve(ledger, 150, key="clinic-b")  # 140 + 150 would exceed, whatever the name
        new_id = _reserve(ledger, 5, key="clinic-b")
        keys = [(s.budget_key, s.entries, s.steps) for s in ledger.summary()]
        old = ledger.entries("(schema-1)")

    assert new_id == 3
    assert keys == [("(schema-1)", 2, 140), ("clinic-b", 1, 5)]
    assert [e.fingerprint for e in old] == ["aaaa", "bbbb"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3


def test_a_budget_key_outside_the_naming_rule_is_refused(tmp_path: Path) -> None:
    with PrivacyLedger.open(tmp_path / "l.sqlite", create=True) as ledger:
        with pytest.raises(ValueError, match=r"got '\(schema-1\)'"):
            _reserve(ledger, 1, key="(schema-1)")
        assert ledger.summary() == []


def _slow_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[bool, dict[str, str], list]:
    """Thread ``slow`` blocks inside its budget computation while thread ``fast`` reserves.

    Returns whether ``fast`` finished while ``slow`` was still computing, each thread's
    outcome, and the final history. The budget has room for exactly one 150-step reservation.
    """
    path = tmp_path / "ledger.sqlite"
    PrivacyLedger.open(path, create=True).close()
    computing, release = threading.Event(), threading.Event()
    real_grant = ledger_module.grant_steps

    def slow_grant(*args: object, **kwargs: object) -> int:
        if threading.current_thread().name == "slow" and not computing.is_set():
            computing.set()
            release.wait(timeout=30)
        return real_grant(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger_module, "grant_steps", slow_grant)
    outcomes: dict[str, str] = {}

    def reserve() -> None:
        name = threading.current_thread().name
        try:
            with PrivacyLedger.open(path) as ledger:
                _reserve(ledger, 150)
            outcomes[name] = "granted"
        except BudgetExceededError:
            outcomes[name] = "refused"
        except Exception as err:  # reported through outcomes, not lost in the thread
            outcomes[name] = repr(err)

    slow, fast = threading.Thread(target=reserve, name="slow"), threading.Thread(target=reserve, name="fast")
    slow.start()
    assert computing.wait(timeout=30)
    fast.start()
    fast.join(timeout=5)
    finished_while_computing = not fast.is_alive()
    release.set()
    slow.join(timeout=90)
    fast.join(timeout=90)
    with PrivacyLedger.open(path) as ledger:
        history = ledger.history("default")
    return finished_while_computing, outcomes, history


def test_the_write_lock_is_not_held_while_epsilon_is_computed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished_while_computing, _, _ = _slow_race(tmp_path, monkeypatch)

    assert finished_while_computing  # another writer was not blocked by a slow computation


def test_a_reservation_during_a_slow_computation_cannot_double_spend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, outcomes, history = _slow_race(tmp_path, monkeypatch)

    assert _epsilon(150) <= BUDGET.max_epsilon < _epsilon(300)  # room for exactly one
    assert outcomes == {"fast": "granted", "slow": "refused"}
    assert history == [(1.0, 0.1, 150)]


@pytest.mark.parametrize(
    "planted",
    [
        "CREATE TRIGGER forget AFTER UPDATE OF status ON entries "
        "BEGIN DELETE FROM entries WHERE id = NEW.id; END",
        "CREATE VIEW spent AS SELECT * FROM entries",
    ],
    ids=["trigger", "view"],
)
def test_a_ledger_with_a_planted_trigger_or_view_is_refused(tmp_path: Path, planted: str) -> None:
    path = tmp_path / "ledger.sqlite"
    PrivacyLedger.init(path)
    with sqlite3.connect(path) as db:
        db.execute(planted)

    with pytest.raises(LedgerError, match="never creates"):
        PrivacyLedger.open(path)
