"""Exporting a finished run's model (TorchScript or ONNX, optionally int8) with ``MODEL_CARD.md``.

``fedsys export RUN_DIR`` rebuilds the final global model (``model.pt``) as the run built it,
writes it in the asked format (:mod:`fedsys.export.formats`), scores the written file on the
run's central test set, and writes the privacy model card (:mod:`fedsys.export.card`) beside it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedsys.config import RunConfig
from fedsys.data.dataset import ArrayDataset
from fedsys.errors import ConfigError
from fedsys.export.card import (
    AUDIT_FILE,
    CARD_FILE,
    CardInputs,
    HolderPrivacy,
    Measurement,
    read_audit,
    read_holders,
    render,
)
from fedsys.export.formats import (
    FORMATS,
    QUANTIZATIONS,
    SUFFIX,
    ExportFormat,
    Quantization,
    load_scorer,
    score,
    write_model,
)

if TYPE_CHECKING:
    from fedsys.api import Run

__all__ = ["CARD_FILE", "ExportResult", "HolderPrivacy", "Measurement", "export_run"]
LEDGER_GLOB = "client-*.sqlite"
_LABEL = {"torchscript": "TorchScript", "onnx": "ONNX"}


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote and measured.

    ``measurements`` holds the exported file's; with int8, the float export's first (before),
    then the int8 file's (after).
    """

    model_path: Path
    card_path: Path
    measurements: tuple[Measurement, ...]
    holders: tuple[HolderPrivacy, ...]


def export_run(
    run_dir: Path,
    *,
    fmt: ExportFormat = "torchscript",
    quantize: Quantization = "none",
    out: Path | None = None,
    ledgers: Sequence[Path] = (),
    audit: Path | None = None,
) -> ExportResult:
    """Export the final model of ``run_dir`` and write its model card.

    Args:
        run_dir: a finished run directory (``summary.json``, ``model.pt``, ``config.toml``).
        fmt: ``torchscript`` or ``onnx``.
        quantize: ``none`` or ``int8`` (dynamic quantisation; the card compares it with float).
        out: where to write (default ``RUN_DIR/export``).
        ledgers: the holders' ledger files or folders of them (default: the run's own
            ``ledgers/`` or its configured ``ledger-dir``, as simulation writes them).
        audit: ``audit.json`` of ``fedsys audit`` (default ``RUN_DIR/audit.json`` if present).

    Raises:
        ConfigError: not a finished run, a bad format, a missing optional package, an unreadable
            ledger or audit.
        ModelError: the model cannot be exported in ``fmt``.
    """
    from fedsys.api import Run

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"--quantize must be int8 (or none), got {quantize!r}")
    run = Run.load(run_dir)
    if not (run_dir / "model.pt").is_file():
        raise ConfigError(f"{run_dir} holds no model.pt: nothing to export")
    ledger_dirs, ledger_files = _ledger_files(run_dir, run.config.ledger_dir, ledgers)
    holders = read_holders(
        ledger_files,
        run_id=str(run.summary.get("run-id", "")),
        reported=run.epsilon_by_client if run.config.dp.enabled else {},
        delta=run.config.budget.target_delta,
    )
    audit_numbers = read_audit(audit or run_dir / AUDIT_FILE)
    target = out or run_dir / "export"
    target.mkdir(parents=True, exist_ok=True)
    central = None if run.config.dataset == "node" else _central(run.config)
    shape, classes = _signature(run)
    path, measurements = _write_and_measure(run.model, target, fmt, quantize, central, shape)
    card = CardInputs(
        run_name=run_dir.resolve().name,
        config=run.config,
        summary=run.summary,
        model_file=path.name,
        model_format=_LABEL[fmt] + (", int8 dynamic quantisation" if quantize == "int8" else ", float32"),
        parameters=sum(p.numel() for p in run.model.parameters()),
        feature_shape=shape,
        num_classes=classes,
        test_examples=None if central is None else len(central),
        holders=holders,
        ledger_dirs=ledger_dirs,
        measurements=measurements,
        audit=audit_numbers,
    )
    card_path = target / CARD_FILE
    card_path.write_text(render(card))
    return ExportResult(path, card_path, tuple(measurements), tuple(holders))


def _write_and_measure(
    model: nn.Module,
    target: Path,
    fmt: ExportFormat,
    quantize: Quantization,
    central: ArrayDataset | None,
    shape: tuple[int, ...],
) -> tuple[Path, list[Measurement]]:
    """Write the model into ``target``; measure it (and, for int8, a float export first)."""
    # tracing needs a batch of the real input type (token ids are integers); zeros when the
    # server holds no data
    example = torch.from_numpy(central.x[:2]) if central is not None else torch.zeros(2, *shape)
    measurements = []
    if quantize == "int8":
        with tempfile.TemporaryDirectory(prefix="fedsys-export-") as tmp:
            float_path = Path(tmp) / f"model{SUFFIX[fmt]}"
            write_model(model, example, float_path, fmt=fmt, quantize="none")
            measurements.append(_measure(float_path, fmt, central, f"{_LABEL[fmt]}, float32 (before)"))
    path = target / f"model{'.int8' if quantize == 'int8' else ''}{SUFFIX[fmt]}"
    write_model(model, example, path, fmt=fmt, quantize=quantize)
    label = f"{_LABEL[fmt]}, int8 dynamic (after)" if quantize == "int8" else f"exported {_LABEL[fmt]}"
    measurements.append(_measure(path, fmt, central, label))
    return path, measurements


def _central(config: RunConfig) -> ArrayDataset:
    from fedsys.data import central_test_data

    return central_test_data(config)


def _signature(run: Run) -> tuple[tuple[int, ...], int]:
    from fedsys.api import model_signature

    return model_signature(run.config)


def _measure(path: Path, fmt: ExportFormat, central: ArrayDataset | None, label: str) -> Measurement:
    metrics = None if central is None else score(load_scorer(path, fmt=fmt), central)
    return Measurement(label=label, size_bytes=path.stat().st_size, metrics=metrics)


def _ledger_files(run_dir: Path, configured: str, given: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """``(folders, files)`` of the holders' ledgers: those given (files, or folders of
    ``*.sqlite``), else the run's own ``ledgers/`` or else its ``ledger-dir`` (simulation)."""
    if given:
        files = []
        for path in given:
            if not path.exists():
                raise ConfigError(f"--ledger {path}: no such file or folder")
            files += sorted(path.glob("*.sqlite")) if path.is_dir() else [path]
        return sorted({p.parent for p in files}), files
    for folder in (run_dir / "ledgers", Path(configured) if configured else None):
        if folder is not None and folder.is_dir() and any(folder.glob(LEDGER_GLOB)):
            return [folder], sorted(folder.glob(LEDGER_GLOB))
    return [], []
