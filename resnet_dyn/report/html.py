"""report.html of ``resnet-dyn-report``: one self-contained page (inline CSS, relative images).

    page = render(sweep, columns, rows, sections)   # then write it into the sweep folder
    page = render(sweep, columns, rows, sections, by_config(sweep, columns, rows))  # with seeds

Every string that comes from a config, an override, an error or a file name is escaped.
When the page has loaded, a small inline script counts the figures that loaded and writes
``data-images-loaded="N/M"`` on ``<body>`` and into the footer, so a missing PNG shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any
from urllib.parse import quote

from resnet_dyn.report.common import Section
from resnet_dyn.report.sweep import BY_CONFIG, MISSING, SEED, Sweep

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
code { background: #f3f3f3; padding: 0 .3em; border-radius: 3px; word-break: break-all; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; }
tbody tr:nth-child(even) { background: #fafafa; }
td.text { text-align: left; } td.error { text-align: left; white-space: normal; min-width: 20em; }
.st-completed { color: #176b2c; } .st-failed, .st-unreadable { color: #b00020; font-weight: bold; }
.st-missing { color: #8a6d00; font-weight: bold; } .st-other { color: #b00020; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; max-width: 70em; }
img.broken { min-height: 2em; outline: 2px dashed #b00020; }
.nodata { color: #777; }
"""

# Counts the figures that loaded once everything has (the load event waits for images).
SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, ok = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { ok++; }
    else { images[i].classList.add("broken"); }
  }
  document.body.setAttribute("data-images-loaded", ok + "/" + images.length);
  document.getElementById("images-loaded").textContent =
    ok + " of " + images.length + " figures loaded";
});
"""


def _cell(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _status_class(status: str) -> str:
    known = ("completed", "failed", "unreadable", MISSING)
    return f"st-{status}" if status in known else "st-other"


def _table(sweep: Sweep, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """The rows of summary.csv, leaving out columns that are empty for every job."""
    shown = [c for c in columns if c in ("job", "status") or any(_cell(r.get(c)) for r in rows)]
    if "error" in shown:  # beside the status, where a failure is seen at once
        shown.remove("error")
        shown.insert(shown.index("status") + 1, "error")
    text = {"job", "status", "error", *sweep.swept}
    head = "".join(f"<th>{escape(c)}</th>" for c in shown)
    body = []
    for job, row in zip(sweep.jobs, rows, strict=True):
        cells = []
        for c in shown:
            value = escape(_cell(row.get(c)))
            if c == "job" and (job.path / "summary.json").is_file():
                href = escape(quote(f"{job.name}/summary.json"))
                value = f'<a href="{href}">{value}</a>'
            classes = ["text" if c in text else "", "error" if c == "error" else ""]
            if c == "status":
                classes.append(_status_class(str(row.get(c))))
            cls = " ".join(x for x in classes if x)
            cells.append(f'<td class="{cls}">{value}</td>' if cls else f"<td>{value}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _by_config_table(sweep: Sweep, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """summary_by_config.csv as a table: the configuration, its counts, and one cell
    ``mean ± std`` per column that some configuration has a mean of."""
    keys = [k for k in sweep.swept if k != SEED]
    counts = [c for c in BY_CONFIG if c != "incomplete"]
    stats = [c[: -len("_mean")] for c in columns if c.endswith("_mean")]
    stats = [c for c in stats if any(_cell(r.get(f"{c}_mean")) for r in rows)]
    notes = ["incomplete"] if any(r.get("incomplete") for r in rows) else []
    head = "".join(f"<th>{escape(c)}</th>" for c in [*keys, *counts, *stats, *notes])
    body = []
    for row in rows:
        cells = [f'<td class="text">{escape(_cell(row.get(k)))}</td>' for k in keys]
        cells += [f"<td>{escape(_cell(row.get(c)))}</td>" for c in counts]
        for c in stats:
            mean, std = _cell(row.get(f"{c}_mean")), _cell(row.get(f"{c}_std"))
            cells.append(f"<td>{escape(mean + (f' ± {std}' if mean and std else ''))}</td>")
        cells += [f'<td class="error">{escape(_cell(row.get(c)))}</td>' for c in notes]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _counts(sweep: Sweep) -> str:
    statuses = [j.status for j in sweep.jobs]
    parts = [f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses)]
    return f"{len(statuses)} job{'s' * (len(statuses) != 1)}: " + ", ".join(parts)


def _section(index: int, section: Section) -> str:
    figures = "".join(
        f'<figure><img src="{escape(quote(f.file))}" alt="{escape(f.caption)}">'
        f"<figcaption>{escape(f.caption)}</figcaption></figure>"
        for f in section.figures
    )
    about = f"<p>{escape(section.about)}</p>" if section.about else ""
    return f'<h2 id="s{index}">{escape(section.title)}</h2>{about}{figures}'


def render(
    sweep: Sweep,
    columns: Sequence[str],
    rows: Sequence[dict[str, Any]],
    sections: Sequence[Section],
    by_config: tuple[Sequence[str], Sequence[dict[str, Any]]] | None = None,
) -> str:
    """The whole page as a string; ``by_config``: the columns and rows of
    summary_by_config.csv, shown as a second table (None: no configuration has seeds)."""
    drawn = [(i, s) for i, s in enumerate(sections) if s.figures]
    empty = [s.title for s in sections if not s.figures and not s.quiet]
    nav = "".join(f'<li><a href="#s{i}">{escape(s.title)}</a></li>' for i, s in drawn)
    common = ", ".join(f"<code>{escape(k)}={escape(v)}</code>" for k, v in sweep.common.items())
    command = escape(sweep.command)
    command = f"<p>Sweep overrides: <code>{command}</code></p>" if command else ""
    grouped = ""
    if by_config is not None:
        grouped = (
            '<h2 id="configs">Configurations over seeds (<a href="summary_by_config.csv">'
            "summary_by_config.csv</a>)</h2><p>One row per configuration (the swept values "
            "less the seed): mean ± sample std over its completed seeds (n_seeds); failed and "
            "unfinished jobs are counted (n_failed, n_missing) and left out of the statistics."
            f"</p>{_by_config_table(sweep, *by_config)}"
        )
        nav = '<li><a href="#configs">Configurations over seeds</a></li>' + nav
    nodata = (
        '<p class="nodata">No data in this sweep for: ' + escape("; ".join(empty)) + ".</p>"
        if empty
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>resnet-dyn report: {escape(sweep.root.name)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>resnet-dyn sweep report</h1>
<p>Folder: <code>{escape(str(sweep.root))}</code></p>
<p>{escape(_counts(sweep))}. Failed and unfinished jobs are listed with their status and error;
the figures use completed jobs (the batch-size figure also the loss curves of failed ones:
a diverged run never reaches epsilon).</p>
{command}
{f"<p>Shared by every job: {common}</p>" if common else ""}
<ul><li><a href="#jobs">Jobs (summary.csv)</a></li>{nav}</ul>
{nodata}
<h2 id="jobs">Jobs (<a href="summary.csv">summary.csv</a>)</h2>
{_table(sweep, columns, rows)}
{grouped}
{"".join(_section(i, s) for i, s in drawn)}
<p><small id="images-loaded"></small></p>
<script>{SCRIPT}</script>
</body>
</html>
"""
