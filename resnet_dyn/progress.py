"""Progress bars for long analyses, inside or outside a Lightning run.

with unit_progress(total=27, description="spectra") as advance:
    for k in units:
        ...
        advance(f"unit {k}")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def unit_progress(
    total: int, description: str, trainer: Any = None
) -> Iterator[Callable[[str], None]]:
    """Yield ``advance(label)``: a rich bar, or a row in Lightning's rich bar when one is live.

    Rich allows one live display at a time, so inside a training run the task is
    added to the trainer's own progress display rather than opening a second one.
    """
    live = getattr(getattr(trainer, "progress_bar_callback", None), "progress", None)
    if live is not None and getattr(live, "live", None) is not None and live.live.is_started:
        task = live.add_task(description, total=total)

        def advance(label: str) -> None:
            live.update(task, advance=1, description=f"{description}: {label}")

        try:
            yield advance
        finally:
            live.remove_task(task)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total)

        def advance(label: str) -> None:
            progress.update(task, advance=1, description=f"{description}: {label}")

        yield advance
