"""``resnet-dyn-dashboard``: a W&B workspace for one sweep, its runs grouped as replicates.

    resnet-dyn -m model.depth=8,14 seed=0,1 callbacks=perturbation hydra.sweep.dir=multirun/demo
    wandb sync multirun/demo/*/wandb/offline-run-*        # the runs are offline by default
    resnet-dyn-dashboard multirun/demo --dry-run           # print the workspace as JSON
    resnet-dyn-dashboard multirun/demo                     # save it, print its URL
    resnet-dyn-dashboard multirun/demo --project P --entity E

(or ``python -m resnet_dyn.cli.dashboard ...``). Reads the sweep folder (its ``multirun.yaml``
and job summaries) and builds, with the ``wandb-workspaces`` package, a workspace named
``resnet_dyn sweep <sweep id>`` whose runs are the sweep's (``sweep_id`` config key or
``sweep:<id>`` tag), grouped by their group (the seeds of one config): a parallel-coordinates
plot of the swept keys (not the seed) against ``val/acc.max`` and ``test/acc``, the runs
table, the loss curves, one section per analysis the sweep ran (spectra, perturbation
growth, identity magnitudes, input noise, Lagzi depth) and its ``figures/*`` images.

``--dry-run`` prints the workspace as JSON (an outline, what the API cannot express, and
``spec``, the view that saving uploads) and needs neither network nor API key. Without it
the workspace is saved as a new view of the project (``--project``, else the jobs'
``logger.wandb.project``, else ``resnet_dyn``) and its URL printed; when that is impossible
(no API key, no network, refused) the command prints one ``error:`` line and exits 2, as it
does for a folder that is not a sweep. Saving takes at most ``--timeout`` seconds in all,
whatever W&B's own retries do: the network part runs in a process killed at the deadline.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from resnet_dyn.errors import UserError

TIMEOUT_S = 30  # for the whole save: an unreachable server fails the command, never hangs it


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="resnet-dyn-dashboard",
        description="Build a W&B workspace for one resnet-dyn sweep folder.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder, e.g. multirun/<date>/<time>")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the workspace as JSON; save nothing"
    )
    parser.add_argument("--project", help="W&B project (default: the jobs' logger.wandb.project)")
    parser.add_argument("--entity", help="W&B entity (default: the jobs' or your default one)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=TIMEOUT_S,
        help=f"seconds the save may take in all (default {TIMEOUT_S})",
    )
    args = parser.parse_args(argv)
    if not 0 < args.timeout < float("inf"):  # also NaN: the deadline needs a real number
        _fail(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    # Imported here so that `--help` and a bad folder answer without loading W&B.
    from resnet_dyn.report import dashboard

    try:
        facts = dashboard.sweep_facts(args.sweep_dir)
    except UserError as exc:
        _fail(str(exc))
    try:
        workspace, omitted = dashboard.build_workspace(facts, args.project, args.entity)
    except ImportError as exc:  # an install without the package (e.g. --no-deps)
        _fail(f"{exc}: install it with `pip install wandb-workspaces`")
    if args.dry_run:
        print(json.dumps(dashboard.describe(workspace, facts, omitted), indent=2))
        return
    try:
        url = dashboard.save(workspace, args.timeout)
    except dashboard.SaveError as exc:
        _fail(str(exc))
    keys = ", ".join(facts.axes) or "no swept key"
    print(f"dashboard: {workspace.name} ({facts.jobs} jobs; {keys}) -> {url}")
    for item in omitted:
        print(f"  not shown: {item}")


if __name__ == "__main__":
    main()
