"""The command line's consoles, its ``--debug`` anywhere on the line, and live progress for
long runs: a bar over rounds and one line per finished round."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from fedsys.config import RunConfig

DEBUG_FLAG = "--debug"


class FedsysConsole(Console):
    """A rich Console that never breaks a printed line when its output is not a terminal.

    Piped or redirected output keeps each message on one line (a log, ``grep`` or a CI page wraps
    it, if at all); in a terminal, rich wraps to the window as usual. Tables are still laid out
    for the console's width.
    """

    @property
    def soft_wrap(self) -> bool:
        return not self.is_terminal

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:  # rich's __init__ sets it; the output decides
        pass


class DebugAnywhere(TyperGroup):
    """A command group that takes ``--debug`` anywhere before ``--``, not only before the
    subcommand (``fedsys simulate ... --debug`` as well as ``fedsys --debug simulate ...``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        head, tail = args[:end], args[end:]
        if DEBUG_FLAG in head[1:]:
            head = [DEBUG_FLAG, *(a for a in head if a != DEBUG_FLAG)]
        return super().parse_args(ctx, head + tail)


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, float) else str(value)


class RoundDisplay:
    """Context manager showing a progress bar; call :meth:`update` with each round's record."""

    def __init__(self, console: Console, config: RunConfig) -> None:
        self.console = console
        self.config = config
        self.progress = Progress(
            TextColumn("[bold]round"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(
            "starting (Ray start-up takes a few seconds)", total=config.num_rounds
        )

    def __enter__(self) -> RoundDisplay:
        mode = []
        mode.append("DP-SGD" if self.config.dp.enabled else "no DP")
        mode.append("SecAgg+" if self.config.secagg.enabled else "plaintext aggregation")
        self.console.print(
            f"[bold]fedsys[/] {self.config.dataset} / {self.config.model} / "
            f"{self.config.simulation.num_clients} clients / {', '.join(mode)}"
        )
        self.progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()

    def update(self, record: Mapping[str, Any]) -> None:
        """Advance the bar and print the round's key numbers."""
        r = record.get
        line = (
            f"round {r('round'):>3} {r('status', 'ok')} acc {_fmt(r('accuracy'))} loss {_fmt(r('loss'))} "
            f"clients {r('clients-succeeded')}/{r('clients-sampled')} fail {r('clients-failed')} "
            f"decl {r('clients-declined')} eps {_fmt(r('epsilon-max'), '.2f')} "
            f"{_fmt(r('round-seconds'), '.1f')}s"
        )
        self.progress.console.print(line, highlight=False)
        self.progress.update(self.task, advance=1, description=f"acc {_fmt(record.get('accuracy'), '.3f')}")

    def print_summary(self, summary: Mapping[str, Any]) -> None:
        """A final table of the run's key numbers."""
        table = Table(title="run summary", show_header=False)
        for key in (
            "rounds-completed",
            "final-accuracy",
            "final-macro-f1",
            "final-loss",
            "epsilon-max",
            "stop-reason",
        ):
            if summary.get(key) not in (None, ""):
                table.add_row(key, _fmt(summary[key]))
        self.console.print(table)
