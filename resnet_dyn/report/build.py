"""The whole report of a sweep folder: summary.csv, the figures and report.html."""

from __future__ import annotations

from pathlib import Path

from resnet_dyn.files import write_bytes_atomic
from resnet_dyn.report.sweep import Sweep, load_sweep, table, write_csv


def build_report(root: Path) -> tuple[Sweep, Path]:
    """Write summary.csv, the figures and report.html into ``root``; return the page's path."""
    # Imported here: matplotlib and torch load only once the folder holds jobs, so bad input
    # fails at once.
    from resnet_dyn.report.figures import draw_all
    from resnet_dyn.report.html import render

    sweep = load_sweep(root)
    sections, batch = draw_all(sweep)
    columns, rows = table(sweep, batch)
    write_csv(root / "summary.csv", columns, rows)
    page = render(sweep, columns, rows, sections)
    return sweep, write_bytes_atomic(root / "report.html", page.encode())
