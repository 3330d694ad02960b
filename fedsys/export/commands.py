"""CLI command of this subpackage (registered by :mod:`fedsys.cli`): ``export``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

# torch 2.13 deprecates torch.jit and torch.ao quantisation (both still work) and its ONNX
# exporter trips pytree's own deprecation: nothing an exporting user can act on
_TORCH_NOISE = (
    r"`torch\.jit\.",
    r"torch\.ao\.quantization is deprecated",
    r"torch\.quantize_per_tensor",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


def register(app: typer.Typer) -> None:
    """Attach this subpackage's commands to ``app``."""
    app.command(name="export")(export)


def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (fedsys simulate or a server).")],
    format_: Annotated[
        str, typer.Option("--format", help="torchscript | onnx (onnx needs fedsys[onnx]).")
    ] = "torchscript",
    quantize: Annotated[
        str | None,
        typer.Option(help="int8: dynamic quantisation; the card compares size and accuracy with float32."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write (default: RUN_DIR/export).")] = None,
    ledger: Annotated[
        list[Path] | None,
        typer.Option(
            "--ledger",
            help="A holder's ledger file, or a folder of them (default: the run's simulated ledgers).",
        ),
    ] = None,
    audit: Annotated[
        Path | None, typer.Option(help="audit.json of fedsys audit (default: RUN_DIR/audit.json).")
    ] = None,
) -> None:
    """Export the run's final model (TorchScript or ONNX) with a privacy MODEL_CARD.md.

    The card lists data, partitions, rounds, DP settings, each holder's ε and δ read from its
    own privacy ledger, SecAgg+ parameters, metrics and, when audit.json exists, the audit's
    ε lower bound. The exported file is scored on the run's central test set.
    """
    from fedsys.cli import console, guarded, stdout
    from fedsys.errors import ConfigError
    from fedsys.export import export_run
    from fedsys.export.formats import FORMATS

    def _run() -> None:
        if format_ not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {format_!r}")
        if quantize not in (None, "int8"):
            raise ConfigError(f"--quantize must be int8, got {quantize!r}")
        with warnings.catch_warnings():
            for message in _TORCH_NOISE:
                warnings.filterwarnings("ignore", message=message)
            result = export_run(
                run_dir,
                fmt="onnx" if format_ == "onnx" else "torchscript",
                quantize="int8" if quantize == "int8" else "none",
                out=out,
                ledgers=ledger or [],
                audit=audit,
            )
        for m in result.measurements:
            accuracy = "not scored" if m.metrics is None else f"accuracy {m.metrics['accuracy']:.4f}"
            console.print(f"{m.label}: {m.size_bytes:,} bytes, {accuracy}", highlight=False)
        stdout.print(str(result.model_path), highlight=False, soft_wrap=True)
        stdout.print(str(result.card_path), highlight=False, soft_wrap=True)

    guarded(_run)
