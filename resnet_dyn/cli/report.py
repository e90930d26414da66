"""``resnet-dyn-report``: one page for a whole sweep, with its table and figures.

    resnet-dyn -m model.depth=8,14 model.skip_scale=0.5,1.0 hydra.sweep.dir=multirun/demo
    resnet-dyn-report multirun/demo              # or: python -m resnet_dyn.cli.report multirun/demo

Reads every job folder of the sweep (``summary.json``, ``.hydra/overrides.yaml``, the analysis
arrays and ``csv/metrics.csv``) and writes into the sweep folder: ``summary.csv`` (one row per
job, failed and unfinished ones included), ``report_*.png`` figures and ``report.html``, a
self-contained page that shows them. Only figures for which the sweep has data are drawn.

summary.csv columns: ``job`` (folder name), one column per swept override key (its value as
given on the command line), ``status`` (completed, failed, diverged, ...; ``missing`` without a
summary.json, ``unreadable`` for a broken one), the final metrics ``test/acc`` ... ``train/loss``,
``epochs``, ``wall_s``, means over the analysed units of ``spectrum/<map>/<stat>``,
``identity/scaled_mean`` and ``abs_mean``, ``perturbation/final_ratio`` (adversarial over
random at the output) and ``attacked_accuracy``, ``final_depth`` (after Lagzi's pruning),
``batch/k`` and ``batch/speedup`` (batch-size sweeps), and ``error``. Empty: no such value.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from resnet_dyn.errors import UserError
from resnet_dyn.report.build import build_report
from resnet_dyn.report.sweep import MISSING


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="resnet-dyn-report",
        description="Summarise a resnet-dyn sweep folder: summary.csv, figures, report.html.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder, e.g. multirun/<date>/<time>")
    args = parser.parse_args(argv)
    try:
        sweep, page = build_report(args.sweep_dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    statuses = [j.status for j in sweep.jobs]
    done, missing = statuses.count("completed"), statuses.count(MISSING)
    failed = len(statuses) - done - missing
    extra = f", {missing} missing" if missing else ""
    jobs = f"{len(statuses)} job{'s' * (len(statuses) != 1)}"
    print(f"report: {jobs} ({done} completed, {failed} failed{extra}) -> {page}")


if __name__ == "__main__":
    main()
