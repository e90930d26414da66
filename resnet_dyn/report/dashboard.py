"""A W&B workspace for one sweep, built with ``wandb-workspaces`` from the sweep folder.

    from resnet_dyn.report.dashboard import build_workspace, describe, sweep_facts

    facts = sweep_facts(Path("multirun/2026-11-30/13-00-00-123456"))
    workspace, omitted = build_workspace(facts, entity="me")
    print(json.dumps(describe(workspace, facts, omitted), indent=2))

The command is ``resnet-dyn-dashboard`` (:mod:`resnet_dyn.cli.dashboard`). What the
workspace shows follows what each run carries (:mod:`resnet_dyn.logs.wandb_run`): runs are
filtered to the sweep by the ``sweep_id`` config key or the ``sweep:<id>`` tag and grouped
by the run's group (the replicates of one config, i.e. its seeds), so every panel draws the
mean over seeds with a min-max band. Sections: the swept keys against ``val/acc.max`` and
``test/acc``; the loss curves; one section per analysis the sweep ran; its figures.

``wandb_workspaces`` is imported only inside these functions: the rest of the package
never needs it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from resnet_dyn.logs.wandb_run import SEED_KEYS, SUMMARIES, sweep_id, swept_keys
from resnet_dyn.report.sweep import Sweep, load_sweep

DEFAULT_PROJECT = "resnet_dyn"
STEP = "trainer/global_step"  # Lightning's W&B logger plots training metrics against it
EPOCH = "epoch"  # the analyses' scalars are plotted against it (wandb_run.EPOCH_AXIS)
# Replicates are few (a handful of seeds): a min-max band shows every one of them.
AGG, BAND = "mean", "minmax"
# The sections' analysis names, by a job's key under summary.json's "analysis" and by its
# callbacks key (a job still running has its config but no summary yet).
ANALYSES = {"units": "spectra", "perturbation": "perturbation", "identity": "identity"}
ANALYSES |= {"noise": "noise", "transient": "lagzi"}
CALLBACKS = {"spectrum": "spectra", "perturbation": "perturbation", "identity": "identity"}
CALLBACKS |= {"noise": "noise", "lagzi": "lagzi"}
# The figures the spectrum analysis logs when no summary lists them yet (running sweeps).
SPECTRUM_FIGURES = ("figures/spectra_hist", "figures/spectra_sorted")
# What wandb-workspaces cannot express; listed in the dry run and the command's output.
NOT_EXPRESSED = (
    "a runs table inside a section: workspaces have no runs-table panel; the runs table is"
    " the workspace's run list (its pinned columns: swept keys, val/acc.max, test/acc, ...)",
    "spectrum histograms (spectrum/unit_NN/<map>/hist): the API has no histogram panel",
    "figures/* as a pattern: a media panel takes exact keys, so it lists the figures the"
    " summaries name (spectra_hist, spectra_sorted); other images need adding by hand",
    "custom charts (frac_one per unit, perturbation and identity curves) read a run's last"
    " logged table: the final epoch, not each analysed epoch",
)


@dataclass
class SweepFacts:
    """What the workspace needs to know of a sweep folder."""

    root: Path
    sweep_id: str
    swept: list[str]  # keys the sweep varies, seeds included (multirun.yaml order)
    axes: list[str]  # W&B config keys of the non-seed swept keys (a group's class)
    analyses: list[str]  # among spectra, perturbation, identity, noise, lagzi
    project: str  # logger.wandb.project of the jobs, else DEFAULT_PROJECT
    entity: str | None  # logger.wandb.entity of the jobs; None: the API key's default
    figures: list[str] = field(default_factory=list)  # figures/<name> media keys
    noise_keys: list[str] = field(default_factory=list)  # noise/accuracy/sigma_<s>
    jobs: int = 0
    command: str = ""
    skipped: list[str] = field(default_factory=list)  # swept keys no run config holds
    logged: bool = True  # False: every job ran with logger=none, there are no W&B runs


def _swept(sweep: Sweep) -> list[str]:
    """multirun.yaml's swept keys (what each run records as ``swept``), then any key whose
    value differs between job folders (a hand-made sweep without multirun.yaml)."""
    return list(dict.fromkeys([*swept_keys(sweep.root), *sweep.swept]))


def _axis(sweep: Sweep, key: str) -> str | None:
    """The W&B config key that shows ``key``'s value: the key itself, or for a config group
    (``model=cifar_resnet,mlp``) its node's class (W&B records ``_target_`` as ``class``);
    None when no run config holds a plain value for it (e.g. a ``hydra.*`` key)."""
    if key.startswith(("paths.", "hydra.")):  # never in a run's config (machine, launcher)
        return None
    for job in sweep.jobs:
        value = job.cfg(key)
        if isinstance(value, dict):
            return f"{key}.class" if "_target_" in value or "class" in value else None
        if value is not None:
            return key
    return None


def _analyses(sweep: Sweep) -> list[str]:
    """The analyses the sweep ran: from its summaries, and from its configs' callbacks so
    that a sweep still running (no summary yet) gets its sections too."""
    found = set()
    for job in sweep.jobs:
        found |= {name for key, name in ANALYSES.items() if job.analysis.get(key)}
        callbacks = job.cfg("callbacks")
        if isinstance(callbacks, dict):
            found |= {name for key, name in CALLBACKS.items() if callbacks.get(key)}
    return [name for name in dict.fromkeys([*ANALYSES.values()]) if name in found]


def _figures(sweep: Sweep) -> list[str]:
    """The ``figures/<name>`` keys the spectrum analysis logged, as ``wandb_spectra`` names
    them (``spectra_hist_final.png`` -> ``figures/spectra_hist``)."""
    names = (Path(str(f)).stem.rsplit("_", 1)[0] for j in sweep.jobs for f in _list(j, "figures"))
    return sorted({f"figures/{n}" for n in names})


def _list(job: Any, key: str) -> list[Any]:
    value = job.analysis.get(key)
    return value if isinstance(value, list) else []


def _noise_keys(sweep: Sweep) -> list[str]:
    """``noise/accuracy/sigma_<s>``, the keys NoiseCallback logs, for the sigmas measured."""
    sigmas = []
    for job in sweep.jobs:
        noise = job.analysis.get("noise")
        if isinstance(noise, dict) and isinstance(noise.get("sigmas"), list):
            sigmas += [s for s in noise["sigmas"] if isinstance(s, (int, float))]
    return [f"noise/accuracy/sigma_{s:g}" for s in sorted(set(sigmas))]


def sweep_facts(root: Path) -> SweepFacts:
    """Read a sweep folder; :class:`~resnet_dyn.errors.UserError` when it is not a sweep."""
    sweep = load_sweep(Path(root))
    swept = _swept(sweep)
    axes, skipped = [], []
    for key in (k for k in swept if k not in SEED_KEYS):
        axis = _axis(sweep, key)
        if axis is None:
            skipped.append(key)
        else:
            axes.append(axis)
    project = next((j.cfg("logger.wandb.project") for j in sweep.jobs if j.config), None)
    entity = next((j.cfg("logger.wandb.entity") for j in sweep.jobs if j.config), None)
    analyses = _analyses(sweep)
    figures = _figures(sweep) or (list(SPECTRUM_FIGURES) if "spectra" in analyses else [])
    return SweepFacts(
        root=sweep.root,
        sweep_id=sweep_id(sweep.root),
        swept=swept,
        axes=list(dict.fromkeys(axes)),
        analyses=analyses,
        project=str(project or DEFAULT_PROJECT),
        entity=str(entity) if entity else None,
        figures=figures,
        noise_keys=_noise_keys(sweep),
        jobs=len(sweep.jobs),
        command=sweep.command,
        skipped=skipped,
        logged=any(j.cfg("logger.wandb") for j in sweep.jobs if j.config),
    )


def summary_key(metric: str) -> str:
    """The runs-table name of a metric's summary: ``val/acc`` -> ``val/acc.max`` (the run
    defines its summary as the best epoch, see ``wandb_run.SUMMARIES``), else the last."""
    return f"{metric}.{SUMMARIES[metric]}" if metric in SUMMARIES else metric


def _line(wr: Any, title: str, ys: list[str], x: str, **extra: Any) -> Any:
    """A line plot of ``ys`` against ``x``: the mean of each replicate group and its band."""
    return wr.LinePlot(
        title=title,
        x=x,
        y=ys,
        groupby=wr.Metric("Group"),
        groupby_aggfunc=AGG,
        groupby_rangefunc=BAND,
        **extra,
    )


def _chart(wr: Any, key: str, spec: str, fields: dict[str, str], title: str, **strings: str) -> Any:
    """The custom chart a run logged under ``key`` (``wandb.plot.line``/``line_series``): W&B
    keeps its data in the run's ``<key>_table``, drawn here with the same Vega spec."""
    return wr.CustomChart(
        query={"summaryTable": {"tableKey": f"{key}_table"}},
        chart_name=spec,
        chart_fields=fields,
        chart_strings={"title": title, **strings},
    )


def _unit_curves(wr: Any, key: str, title: str, xname: str) -> Any:
    """A chart of ``wandb_curves``: one line per curve against the unit or block index."""
    fields = {"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"}
    return _chart(wr, key, "wandb/lineseries/v0", fields, title, xname=xname)


def _parallel(wr: Any, axes: list[str], metrics: list[str], title: str) -> Any:
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(a)) for a in axes]
    columns += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(m)) for m in metrics]
    return wr.ParallelCoordinatesPlot(title=title, columns=columns)


def _sweep_section(ws: Any, wr: Any, facts: SweepFacts) -> Any:
    keys = ", ".join(facts.axes) or "no swept key"
    notes = [
        f"**Sweep** `{facts.sweep_id}`: {facts.jobs} jobs, `{facts.root}`.",
        f"Overrides: `{facts.command}`." if facts.command else "",
        "Runs are grouped by replicates (configs that differ only in the seed): panels show"
        " the mean over seeds and the min-max band.",
        "Offline runs appear once uploaded: `wandb sync <sweep dir>/*/wandb/offline-run-*`.",
    ]
    panels = [
        _parallel(wr, facts.axes, [summary_key("val/acc"), "test/acc"], f"{keys} vs accuracy"),
        wr.RunComparer(diff_only="split"),
        wr.MarkdownPanel(markdown="\n\n".join(n for n in notes if n)),
    ]
    return ws.Section(name="Sweep", panels=panels, is_open=True)


def _curves_section(ws: Any, wr: Any) -> Any:
    panels = [
        _line(wr, "train/loss", ["train/loss"], STEP),
        _line(wr, "val/loss", ["val/loss"], STEP),
        _line(wr, "val/acc", ["val/acc"], STEP),
    ]
    return ws.Section(name="Loss curves", panels=panels, is_open=True)


def _spectra_section(ws: Any, wr: Any, facts: SweepFacts) -> Any:
    panels = [
        _chart(
            wr,
            "spectrum/frac_one_by_unit",
            "wandb/line/v0",
            {"x": "unit", "y": "frac_one", "stroke": "map"},
            "frac_one per unit (last analysed epoch)",
        ),
        wr.WeavePanelSummaryTable(table_name="spectrum/table"),
        _line(wr, "spectrum/accuracy (analysed images)", ["spectrum/accuracy"], EPOCH),
    ]
    return ws.Section(name="Spectra", panels=panels, is_open=True)


def _perturbation_section(ws: Any, wr: Any, facts: SweepFacts) -> Any:
    panels = [
        _unit_curves(wr, "perturbation/rel", "relative perturbation size per unit", "unit k"),
        _unit_curves(wr, "perturbation/abs", "absolute perturbation size per unit", "unit k"),
        _line(wr, "final_ratio (adversarial / random)", ["perturbation/final_ratio"], EPOCH),
        _line(
            wr,
            "accuracy under attack",
            [f"perturbation/{k}_accuracy" for k in ("clean", "attacked", "random")],
            EPOCH,
        ),
        _parallel(wr, facts.axes, ["perturbation/final_ratio"], "swept keys vs final_ratio"),
    ]
    return ws.Section(name="Perturbation growth", panels=panels, is_open=True)


def _identity_section(ws: Any, wr: Any, facts: SweepFacts) -> Any:
    panels = [
        _unit_curves(wr, "identity/blocks", "distance from identity per block", "block l"),
        _line(wr, "identity/scaled_mean", ["identity/scaled_mean"], EPOCH),
        _line(wr, "identity/abs_mean", ["identity/abs_mean"], EPOCH),
        _parallel(wr, facts.axes, ["identity/scaled_mean"], "swept keys vs scaled_mean"),
    ]
    return ws.Section(name="Identity magnitudes", panels=panels, is_open=True)


def _noise_section(ws: Any, wr: Any, facts: SweepFacts) -> Any:
    if facts.noise_keys:  # the sigmas measured: one bar per sigma and replicate group
        panel = wr.BarPlot(
            title="accuracy under input noise",
            metrics=facts.noise_keys,
            groupby=wr.Metric("Group"),
            groupby_aggfunc=AGG,
            groupby_rangefunc=BAND,
        )
    else:  # no summary names the sigmas yet: every noise/accuracy/* key
        panel = wr.LinePlot(
            title="accuracy under input noise",
            x=EPOCH,
            metric_regex="noise/accuracy/.*",
            groupby=wr.Metric("Group"),
            groupby_aggfunc=AGG,
            groupby_rangefunc=BAND,
        )
    return ws.Section(name="Input noise", panels=[panel], is_open=True)


def _lagzi_section(ws: Any, wr: Any, facts: SweepFacts) -> Any:
    panels = [
        _line(wr, "depth while pruning", ["lagzi/depth"], EPOCH),
        _line(wr, "convergence criterion", ["lagzi/convergence"], EPOCH),
        wr.MediaBrowser(title="residual trajectories", media_keys=["lagzi/trajectories"]),
    ]
    return ws.Section(name="Lagzi depth", panels=panels, is_open=True)


SECTIONS = {
    "spectra": _spectra_section,
    "perturbation": _perturbation_section,
    "identity": _identity_section,
    "noise": _noise_section,
    "lagzi": _lagzi_section,
}


def build_workspace(
    facts: SweepFacts, project: str | None = None, entity: str | None = None
) -> tuple[Any, list[str]]:
    """The sweep's ``wandb_workspaces.workspaces.Workspace`` (not saved) and what it leaves
    out. ``entity`` None: the sweep's ``logger.wandb.entity``, else empty (the caller
    fills in the API key's default entity before saving)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = [_sweep_section(ws, wr, facts), _curves_section(ws, wr)]
    sections += [SECTIONS[name](ws, wr, facts) for name in facts.analyses]
    if facts.figures:
        media = wr.MediaBrowser(title="figures", media_keys=facts.figures)
        sections.append(ws.Section(name="Figures", panels=[media], is_open=True))
    # The runs table: the swept keys, then the outcome of each run.
    columns = [f"config:{a}" for a in facts.axes]
    columns += [f"summary:{summary_key(m)}" for m in ("val/acc", "val/loss", "test/acc")]
    columns += [f"summary:{k}" for k in ("test/loss", "status", "epochs", "wall_s", "params")]
    runs = ws.RunsetSettings(
        # Either mark selects a run: one whose tags or config were edited in the UI shows.
        filters=ws.Or(
            ws.Config("sweep_id") == facts.sweep_id,
            ws.Tags().isin([f"sweep:{facts.sweep_id}"]),
        ),
        groupby=[ws.Metric("Group")],
        order=[ws.Ordering(ws.Summary(summary_key("val/acc")), ascending=False)],
        pinned_columns=columns,
    )
    workspace = ws.Workspace(
        name=f"resnet_dyn sweep {facts.sweep_id}",
        entity=entity or facts.entity or "",
        project=project or facts.project,
        sections=sections,
        runset_settings=runs,
    )
    omitted = [f"swept key {k}: no run config holds a value for it" for k in facts.skipped]
    if not facts.logged:
        omitted.insert(0, "every run: the jobs ran with logger=none, they have no W&B run")
    return workspace, [*omitted, *NOT_EXPRESSED]


def _keys(panel: Any) -> list[str]:
    """The metrics, config keys, tables or media one panel shows, by name."""
    out: list[str] = []
    for column in getattr(panel, "columns", None) or []:
        metric = column.metric
        kind = type(metric).__name__
        out.append(f"{'config' if kind == 'Config' else 'summary'}:{metric.name}")
    ys = getattr(panel, "y", None) or getattr(panel, "metrics", None) or []
    out += [getattr(y, "name", y) for y in ys]
    if getattr(panel, "metric_regex", None):
        out.append(f"regex:{panel.metric_regex}")
    out += list(getattr(panel, "media_keys", None) or [])
    table = (getattr(panel, "query", None) or {}).get("summaryTable", {}).get("tableKey")
    out += [table] if table else []
    out += [panel.table_name] if getattr(panel, "table_name", None) else []
    return [str(k) for k in out]


def describe(workspace: Any, facts: SweepFacts, omitted: list[str]) -> dict[str, Any]:
    """The workspace as JSON-ready data: a readable outline (sweep, runs filter and
    grouping, sections and panels by key) and ``spec``, the view that saving uploads."""
    runs = workspace.runset_settings
    sections = []
    for section in workspace.sections:
        panels = []
        for panel in section.panels:
            strings = getattr(panel, "chart_strings", None) or {}
            title = getattr(panel, "title", None) or strings.get("title")
            item = {"type": type(panel).__name__, "title": title}
            if getattr(panel, "x", None):
                item["x"] = str(getattr(panel.x, "name", panel.x))
            item["keys"] = _keys(panel)
            panels.append(item)
        sections.append({"name": section.name, "panels": panels})
    # The wire model (what Workspace.save() sends); the package has no public name for it.
    spec = workspace._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")
    return {
        "workspace": {
            "name": workspace.name,
            "entity": workspace.entity or None,  # None: the API key's default entity
            "project": workspace.project,
        },
        "sweep": {
            "dir": str(facts.root),
            "id": facts.sweep_id,
            "jobs": facts.jobs,
            "swept": facts.swept,
            "axes": facts.axes,
            "analyses": facts.analyses,
        },
        "runs": {
            "filter": runs.filters,
            "group_by": [getattr(g, "name", str(g)) for g in runs.groupby],
            "order": [f"{o.item.name} {'asc' if o.ascending else 'desc'}" for o in runs.order],
            "columns": list(runs.pinned_columns),
        },
        "sections": sections,
        "not_expressed": omitted,
        "spec": spec,
    }


class SaveError(Exception):
    """The workspace could not be saved: no credentials, no network, a refusal."""


def _credentials(base_url: str) -> bool:
    """Whether W&B has credentials for ``base_url``, asked without a prompt or the network:
    ``wandb.Api()`` would otherwise prompt on a terminal."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk.lib import wbauth

        auth = wbauth.authenticate_session(
            host=base_url, source="resnet-dyn-dashboard", prompt=False, update_session=False
        )
        return auth is not None
    except Exception:  # an internal API that moved: let wandb.Api() decide
        return True


PROXY_KEYS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _refused(base_url: str, timeout_s: float) -> None:
    """:class:`SaveError` at once when the server's port refuses connections: W&B would
    retry until the deadline and then say only that it got no answer. Any other outcome
    (connected, silent, unresolved) is left to W&B; so is every server behind a proxy,
    which a direct connection does not test."""
    if any(os.environ.get(k) for k in PROXY_KEYS):
        return
    url = urlsplit(base_url)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:  # a malformed port: W&B's own message names the problem
        return
    if not url.hostname:
        return
    try:
        with socket.create_connection((url.hostname, port), timeout=min(timeout_s, 5)):
            return
    except ConnectionRefusedError:
        raise SaveError(
            f"cannot save the workspace to {base_url}: connection refused (no server there)"
        ) from None
    except OSError:  # a timeout, no route, no name: W&B decides, within the deadline
        return


def _save_now(workspace: Any, timeout_s: float, tell: Any) -> str:
    """Save ``workspace`` and return its URL (the network part, run in the save process).
    ``tell(base_url)`` is called once the server's address is known, so that the caller
    can name it when this never returns."""
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    # wandb_workspaces makes its own wandb.Api() (no timeout argument): they take the
    # class default, read from WANDB_HTTP_TIMEOUT when wandb was first imported. These
    # only make a failure's message W&B's own; the deadline in save() is what holds.
    os.environ["WANDB_HTTP_TIMEOUT"] = str(max(1, int(timeout_s)))
    if hasattr(wandb.Api, "_HTTP_TIMEOUT"):
        wandb.Api._HTTP_TIMEOUT = timeout_s
    base_url = os.environ.get("WANDB_BASE_URL") or str(wandb.setup().settings.base_url)
    tell(base_url)
    if not _credentials(base_url):
        raise SaveError(
            f"no W&B API key for {base_url}: run `wandb login` or set WANDB_API_KEY"
            " (--dry-run prints the workspace without one)"
        )
    _refused(base_url, timeout_s)
    try:
        api = wandb.Api(timeout=timeout_s)
        if not workspace.entity:
            entity = api.default_entity
            if not entity:
                raise SaveError(f"{base_url} names no default entity for this key: pass --entity")
            workspace.entity = entity
        workspace.save()
        return str(workspace.url)
    except SaveError:
        raise
    except Exception as exc:  # wandb raises many kinds (auth, network, HTTP, GraphQL)
        lines = str(exc).strip().splitlines()
        first = lines[0] if lines else type(exc).__name__
        raise SaveError(f"cannot save the workspace to {base_url}: {first}") from exc


def _save_child(workspace: Any, timeout_s: float, conn: Any) -> None:
    """The save process: its own process group (so that the parent can kill it with all
    it started), no terminal (no prompt, no W&B log lines on the user's stderr, and no
    grandchild holding the caller's pipes open), its answers sent over ``conn``."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    try:
        conn.send(("url", _save_now(workspace, timeout_s, lambda url: conn.send(("base", url)))))
    except SaveError as exc:
        conn.send(("error", str(exc)))
    except BaseException as exc:  # anything else still answers in one line
        conn.send(("error", f"cannot save the workspace: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _kill_group(pgid: int) -> None:
    """SIGKILL the save process and whatever it started in its group (W&B's service runs
    in a session of its own and exits when the save process is gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pgid, signal.SIGKILL)


def _late(base_url: str | None, timeout_s: float) -> SaveError:
    where = base_url or "the W&B server"
    return SaveError(
        f"cannot save the workspace to {where}: no answer within {timeout_s:g} s"
        " (unreachable or silent server; --timeout sets the limit)"
    )


def _save_in_thread(workspace: Any, timeout_s: float) -> str:
    """Where fork is missing (Windows): the save in a daemon thread, abandoned at the
    deadline; the command then exits with the thread still blocked."""
    answer: dict[str, str] = {}

    def work() -> None:
        try:
            answer["url"] = _save_now(workspace, timeout_s, lambda url: answer.update(base=url))
        except SaveError as exc:
            answer["error"] = str(exc)
        except Exception as exc:
            answer["error"] = f"cannot save the workspace: {type(exc).__name__}: {exc}"

    thread = threading.Thread(target=work, name="resnet-dyn-dashboard-save", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "url" in answer:
        return answer["url"]
    if "error" in answer:
        raise SaveError(answer["error"])
    raise _late(answer.get("base"), timeout_s)


def save(workspace: Any, timeout_s: float) -> str:
    """Save ``workspace`` as a new view and return its URL; :class:`SaveError` (one line)
    when it cannot be saved, at the latest ``timeout_s`` seconds after the call.

    W&B's clients retry on their own and do not always keep a per-request timeout (its
    service process has its own waits), so the network part runs in a forked process that
    is killed, with everything it started, at the deadline: a closed port, a server that
    accepts and never answers, or a retry loop all end the same way."""
    if timeout_s <= 0:
        raise SaveError(f"--timeout must be positive, got {timeout_s:g}")
    if "fork" not in multiprocessing.get_all_start_methods():
        return _save_in_thread(workspace, timeout_s)
    deadline = time.monotonic() + timeout_s
    ctx = multiprocessing.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_save_child, args=(workspace, timeout_s, writer), daemon=True)
    proc.start()
    writer.close()  # so that the child's end closing reads as EOF here
    base_url = None
    try:
        while reader.poll(max(0.0, deadline - time.monotonic())):
            try:
                kind, value = reader.recv()
            except EOFError:  # the process died without an answer (killed, crashed)
                proc.join(1)
                raise SaveError(
                    f"cannot save the workspace to {base_url or 'the W&B server'}: the save"
                    f" process ended without an answer (exit code {proc.exitcode})"
                ) from None
            if kind == "base":
                base_url = value
            elif kind == "url":
                return str(value)
            else:
                raise SaveError(str(value))
        raise _late(base_url, timeout_s)
    finally:
        # Before join: the group id stays reserved while its leader is unreaped.
        _kill_group(proc.pid)
        proc.join()
        reader.close()
