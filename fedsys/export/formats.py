"""Writing a trained model as TorchScript or ONNX, optionally int8-quantised, and scoring the file.

- TorchScript: ``torch.jit.trace`` on an example batch (control flow that depends on the input
  is frozen as traced; the batch size stays free). Loaded back with ``torch.jit.load``.
- ONNX: ``torch.onnx.export`` with the ``torch.export``-based exporter (torch >= 2.9's default;
  needs ``onnx`` and ``onnxscript``), a dynamic batch dimension, weights inside the file. Scored
  with ``onnxruntime`` (extra ``fedsys[onnx]``).
- int8: dynamic quantisation, weights stored as int8 and activations quantised on the fly:
  ``torch.ao.quantization.quantize_dynamic`` on ``Linear``/``LSTM`` for TorchScript, and
  ``onnxruntime.quantization.quantize_dynamic`` for ONNX (a torch-quantised module does not
  pass ``torch.export``).

Scoring runs the written file, not the in-memory module, so it measures what ships.
torch 2.13 deprecates ``torch.jit`` and ``torch.ao.quantization`` (both still work; the
warnings they raise are torch's own).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from fedsys.data.dataset import ArrayDataset
from fedsys.errors import ConfigError, ModelError
from fedsys.metrics import classification_metrics

ExportFormat = Literal["torchscript", "onnx"]
Quantization = Literal["none", "int8"]
FORMATS: tuple[ExportFormat, ...] = ("torchscript", "onnx")
QUANTIZATIONS: tuple[Quantization, ...] = ("none", "int8")
SUFFIX: dict[ExportFormat, str] = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
QUANTIZED_TYPES: set[type[nn.Module]] = {nn.Linear, nn.LSTM}
INPUT_NAME, OUTPUT_NAME = "features", "logits"
Scorer = Callable[[np.ndarray], np.ndarray]  # a batch of features -> logits


def write_model(
    model: nn.Module, example: torch.Tensor, path: Path, *, fmt: ExportFormat, quantize: Quantization
) -> Path:
    """Write ``model`` (eval mode) to ``path`` in ``fmt``; with ``quantize="int8"``, quantised.

    Raises:
        ConfigError: ONNX export without its packages installed.
        ModelError: the model cannot be traced or exported.
    """
    model = model.eval()
    if fmt == "torchscript":
        if quantize == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, QUANTIZED_TYPES, dtype=torch.qint8)  # type: ignore[no-untyped-call]
        return _write_torchscript(model, example, path)
    if quantize == "none":
        return _write_onnx(model, example, path)
    float_path = path.with_name(path.name + ".float.tmp")
    try:
        _write_onnx(model, example, float_path)
        _import_onnx("onnxruntime.quantization")
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(float_path, path, weight_type=QuantType.QInt8)
    finally:
        float_path.unlink(missing_ok=True)
    return path


def load_scorer(path: Path, *, fmt: ExportFormat) -> Scorer:
    """A function from a batch of features to logits, running the written file.

    Raises:
        ConfigError: ONNX scoring without onnxruntime installed.
    """
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]

        def run_torchscript(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out: np.ndarray = module(torch.from_numpy(x)).numpy()
            return out

        return run_torchscript
    ort = _import_onnx("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run_onnx(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        return out

    return run_onnx


def score(scorer: Scorer, data: ArrayDataset, *, batch_size: int = 2048) -> dict[str, float]:
    """Mean cross-entropy (``loss``) and classification metrics of ``scorer`` on ``data``,
    computed as :func:`fedsys.training.evaluate` computes them for the run."""
    losses, probs = [], []
    for start in range(0, len(data), batch_size):
        logits = torch.from_numpy(np.asarray(scorer(data.x[start : start + batch_size]), dtype=np.float32))
        labels = torch.from_numpy(data.y[start : start + batch_size])
        losses.append(float(nn.functional.cross_entropy(logits, labels, reduction="sum")))
        probs.append(torch.softmax(logits, dim=1).numpy())
    probabilities = np.concatenate(probs) if probs else np.zeros((0, data.num_classes))
    return {"loss": sum(losses) / max(len(data), 1), **classification_metrics(data.y, probabilities)}


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    try:
        with torch.no_grad():
            traced = torch.jit.trace(model, (example,))  # type: ignore[no-untyped-call]
    except Exception as err:  # tracing surfaces any error the model's forward raises
        raise ModelError(f"cannot trace the model to TorchScript: {err}") from err
    traced.save(str(path))
    return path


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    _import_onnx("onnxscript")
    batch = torch.export.Dim("batch", min=1)
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            external_data=False,
            verbose=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
        )
    except Exception as err:  # the exporter wraps torch.export's and onnxscript's errors
        raise ModelError(
            f"cannot export the model to ONNX: {_root_cause(err)} (data-dependent Python control "
            "flow in forward() stops torch.export; --format torchscript traces through it)"
        ) from err
    return path


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _import_onnx(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(
            f"--format onnx needs onnx, onnxscript and onnxruntime: pip install 'fedsys[onnx]'; {err}"
        ) from err
