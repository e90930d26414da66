"""The whole report of a sweep folder: summary.csv, summary_by_config.csv (where seeds repeat a
configuration), the figures and report.html."""

from __future__ import annotations

from pathlib import Path

from resnet_dyn.errors import UserError
from resnet_dyn.files import check_writable, unwritable_reason, write_bytes_atomic
from resnet_dyn.report.sweep import Sweep, by_config, load_sweep, table, write_csv

BY_CONFIG_FILE = "summary_by_config.csv"


def build_report(root: Path) -> tuple[Sweep, Path]:
    """Write summary.csv, the figures and report.html into ``root``; return the page's path.
    Where some configuration has several jobs (seeds), also summary_by_config.csv (one row per
    configuration: :func:`~resnet_dyn.report.sweep.by_config`); else an old one is removed.

    Raises :class:`UserError` (one line) when ``root`` is not a sweep, or is a folder the
    report cannot be written to (read-only, full, ...: the rule of
    :func:`~resnet_dyn.files.unwritable_reason`), before or while writing.
    """
    # Imported here: matplotlib and torch load only once the folder holds jobs, so bad input
    # fails at once.
    from resnet_dyn.report.figures import draw_all
    from resnet_dyn.report.html import render

    sweep = load_sweep(root)
    reason = check_writable(root)
    try:
        if reason is not None:
            raise OSError(reason)
        sections, batch = draw_all(sweep)
        columns, rows = table(sweep, batch)
        write_csv(root / "summary.csv", columns, rows)
        grouped = by_config(sweep, columns, rows) if sweep.has_replicates() else None
        if grouped is not None:
            write_csv(root / BY_CONFIG_FILE, *grouped)
        else:
            (root / BY_CONFIG_FILE).unlink(missing_ok=True)
        page = render(sweep, columns, rows, sections, grouped)
        return sweep, write_bytes_atomic(root / "report.html", page.encode())
    except OSError as exc:
        reason = reason or unwritable_reason(exc)
        if reason is None:
            raise
        raise UserError(
            f"{root}: cannot write the report there ({reason}); free space there, or copy"
            " the sweep folder somewhere writable and run resnet-dyn-report on the copy"
        ) from exc
