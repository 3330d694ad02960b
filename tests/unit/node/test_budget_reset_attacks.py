"""Attacks on a data holder's budget: re-shaping its data or its ledger must never reset the spend."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsys.config import RunConfig
from fedsys.errors import LedgerError
from fedsys.models import build_model, to_arrays
from fedsys.node.settings import HolderSettings, holder_settings
from fedsys.node.update import _holder_data, compute_update, local_data, precheck_budget
from fedsys.privacy import PrivacyLedger

CONFIG = RunConfig().replace(
    {"num-classes": 2, "train.local-steps": 5, "train.batch-size": 8, "train.momentum": 0.0}
)


def _frame(rows: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 3))
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": (x[:, 0] > 0).astype(int)})


def _holder(tmp_path: Path, **node: object) -> HolderSettings:
    data, ledger = tmp_path / "site.csv", tmp_path / "state" / "ledger.sqlite"
    _frame().to_csv(data, index=False)
    ledger.parent.mkdir()
    PrivacyLedger.init(ledger)  # what `fedsys ledger init` does, once
    config = {
        "data-path": str(data),
        "label-column": "y",
        "num-classes": 2,
        "max-epsilon": 50.0,
        "ledger-path": str(ledger),
        "feature-range": "-4,4",  # public range of the holder's values (fedsys.data.scaling)
        **node,
    }
    return holder_settings(config, CONFIG)


def _train(settings: HolderSettings) -> None:
    _holder_data.cache_clear()  # every round runs in a fresh process in deployment
    data = local_data(CONFIG, settings)
    model = build_model(CONFIG.model, data.train.feature_shape, data.train.num_classes)
    update = compute_update(CONFIG, settings, to_arrays(model), server_round=1, run_id="run")
    assert update.status == "ok", update.reason


def _spent(settings: HolderSettings) -> float:
    _holder_data.cache_clear()
    return precheck_budget(CONFIG, settings)[1]


def _shuffle(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sample(frac=1.0, random_state=1)


def _append(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[[0]]])


def _drop(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[1:]


def _reorder_columns(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["c", "y", "a", "b"]]


@pytest.mark.parametrize("rewrite", [_shuffle, _append, _drop, _reorder_columns])
def test_rewriting_the_data_keeps_the_previous_spend(
    tmp_path: Path, rewrite: Callable[[pd.DataFrame], pd.DataFrame], caplog: pytest.LogCaptureFixture
) -> None:
    settings = _holder(tmp_path)
    _train(settings)
    spent = _spent(settings)
    assert spent > 0

    assert settings.data_path is not None
    rewrite(pd.read_csv(settings.data_path)).to_csv(settings.data_path, index=False)

    assert _spent(settings) == spent  # the same budget, not a fresh one
    with caplog.at_level(logging.WARNING, logger="fedsys"):
        _train(settings)
    assert "changed since" in caplog.text
    assert _spent(settings) > spent


def test_a_second_declared_data_set_has_its_own_budget(tmp_path: Path) -> None:
    settings = _holder(tmp_path)
    _train(settings)

    other = holder_settings({**_node_config(settings), "dataset-name": "clinic-b"}, CONFIG)

    assert _spent(other) == 0.0 < _spent(settings)


def _node_config(settings: HolderSettings) -> dict[str, object]:
    return {
        "data-path": str(settings.data_path),
        "label-column": "y",
        "num-classes": 2,
        "max-epsilon": 50.0,
        "ledger-path": str(settings.ledger_path),
        "feature-range": "-4,4",  # public range of the holder's values (fedsys.data.scaling)
    }


def _delete(path: Path) -> None:
    path.unlink()


def _truncate(path: Path) -> None:
    path.write_bytes(b"")


def _corrupt(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[:16] = b"not a ledger!!!!"
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [_delete, _truncate, _corrupt])
def test_a_deployed_client_refuses_to_train_on_a_damaged_ledger(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    settings = _holder(tmp_path)
    _train(settings)

    damage(settings.ledger_path)
    left = settings.ledger_path.read_bytes() if settings.ledger_path.exists() else None

    with pytest.raises(LedgerError, match="fedsys ledger init"):
        _train(settings)
    with pytest.raises(LedgerError, match="fedsys ledger init"):
        _spent(settings)
    assert (settings.ledger_path.read_bytes() if settings.ledger_path.exists() else None) == left


def test_a_simulated_client_still_creates_its_ledger(tmp_path: Path) -> None:
    config = CONFIG.replace({"ledger-dir": str(tmp_path / "ledgers")})
    settings = holder_settings({"partition-id": 0, "num-partitions": 3}, config)

    assert precheck_budget(config, settings) == ("", 0.0)
    assert settings.ledger_path.is_file()
