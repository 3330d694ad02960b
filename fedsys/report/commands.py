"""CLI commands of this subpackage (registered by :mod:`fedsys.cli`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this subpackage's commands to ``app``."""
