"""One self-contained HTML page from a results store: the study's questions, answered with
plots (PNG embedded as base64, drawn with matplotlib's Agg canvas, no pyplot state) and
tables. No scripts, no external assets: the page opens offline in any browser.

Reports read only results: the store is opened read-only and nothing else is touched. A
section whose rows the store lacks is replaced by a one-line note saying how to fill it.

Significance marks: ``*`` p < 0.05, ``**`` p < 0.01, ``***`` p < 0.001. Ablation p-values
are Holm-adjusted within each sweep by the analysis (as stored); the rank/targets table
Holm-adjusts the stored paired-randomization p-values of each model's final adapters
against its head-only run.

The page is assembled here; the store is read by :mod:`relevance_lens.report.results`, the
figures drawn by :mod:`relevance_lens.report.figures`, the tables built by
:mod:`relevance_lens.report.tables`, and the sections written by :mod:`relevance_lens.report.train_sections`
(training, ranks, targets), :mod:`relevance_lens.report.layer_sections` (ablations, ΔW, lens) and
:mod:`relevance_lens.report.search_sections` (a recipe search's dev curves and its one test number);
heads, attributions and activation patching by ``head_sections``, ``attribute_sections`` and ``patch_sections``.
With ``figures``, the same sections' figures and tables are also written as files for a paper by
:mod:`relevance_lens.report.paper`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from relevance_lens.data.formats import atomic_write
from relevance_lens.faults import kill_point
from relevance_lens.report.attribute_sections import attribute_section
from relevance_lens.report.figures import MAX_PANELS, TARGET_STYLES
from relevance_lens.report.head_sections import heads_section
from relevance_lens.report.layer_sections import (
    heatmap_section,
    layer_sweeps_section,
    lens_section,
    roles_section,
    weights_section,
)
from relevance_lens.report.paper import write_figures
from relevance_lens.report.patch_sections import patch_section
from relevance_lens.report.results import Results, RunInfo, _eval_label, read_rows
from relevance_lens.report.search_sections import search_section
from relevance_lens.report.tables import Section, _table, _table_raw, mark
from relevance_lens.report.train_sections import checkpoint_section, ranks_section, targets_section

__all__ = [
    "MAX_PANELS",
    "SECTIONS",
    "STYLE",
    "TARGET_STYLES",
    "Results",
    "RunInfo",
    "Section",
    "checkpoint_section",
    "config_section",
    "heatmap_section",
    "layer_sweeps_section",
    "lens_section",
    "mark",
    "ranks_section",
    "read_rows",
    "render",
    "roles_section",
    "search_section",
    "sections",
    "targets_section",
    "weights_section",
    "write_report",
]


def config_section(res: Results) -> Section:
    """Every run's exact training config, and every analysis' settings, collapsible."""
    train = {}
    for r in res.get("train"):
        train.setdefault(r["run"], {})[r["metric"]] = r
    parts = []
    if train:
        body = []
        for run in sorted(train, key=lambda x: (res.runs[x].model, res.runs[x].targets, res.runs[x].rank or 0)):
            rows = train[run]
            first = next(iter(rows.values()))
            config = html.escape(json.dumps(first["config"], indent=2, sort_keys=True))
            details = f"<details><summary>{html.escape(run)}</summary><pre>{config}</pre></details>"
            loss = rows.get("loss")
            body.append(
                [
                    res.runs[run].model,
                    res.runs[run].label,
                    res.runs[run].seed,
                    int(rows["steps"]["value"]) if "steps" in rows else None,
                    loss["value"] if loss else None,
                    details,
                ]
            )
        parts.append(_table_raw(["model", "run", "seed", "steps", "last loss", "exact config"], body))
    settings = {}
    for r in res.rows:
        if r["analysis"] != "train":
            settings.setdefault((r["analysis"], r["config_json"]), r["config"])
    items = "".join(
        f"<details><summary>{html.escape(a)} · {html.escape(_eval_label(c) if 'eval' in c else 'settings')}</summary>"
        f"<pre>{html.escape(json.dumps(c, indent=2, sort_keys=True))}</pre></details>"
        for (a, _), c in sorted(settings.items())
    )
    parts.append(f"<h3>Analysis settings</h3>{items}" if items else "")
    parts.append(_timings(res))
    return Section("configs", "Runs and their exact configs", "".join(parts) or None, "No runs in this store.")


def _timings(res: Results) -> str:
    """What each cell took, on which machine (the study's timing rows; cells run whole only)."""
    if not res.timings:
        return ""
    body = []
    for r in sorted(res.timings, key=lambda r: r["config"].get("started", "")):
        where = r["config"].get("machine") or {}
        load = where.get("load_average")
        body.append(
            [
                r["run"],
                r["variant"],
                f"{r['value']:,.1f}",
                where.get("gpu") or f"{where.get('processor', '?')} [{where.get('cpu_features', '')}]",
                where.get("threads"),
                "-" if load is None else f"{load:.2f}",
                r["config"].get("started", "-"),
            ]
        )
    return "<h3>Time</h3>" + _table(
        ["run", "cell", "seconds", "machine", "threads", "load at end", "started"],
        body,
        "Wall seconds of each cell that ran whole in one process (a run resumed after a kill is not timed).",
    )


SECTIONS: tuple[Callable[[Results], Section], ...] = (
    search_section,
    checkpoint_section,
    ranks_section,
    targets_section,
    heatmap_section,
    layer_sweeps_section,
    roles_section,
    heads_section,
    weights_section,
    lens_section,
    attribute_section,
    patch_section,
    config_section,
)

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1300px;padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2.2rem}h3{font-size:1.05rem;margin-top:1.4rem}
img{max-width:100%;height:auto;display:block;margin:.5rem 0}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:right;vertical-align:top}
th{background:#f4f4f4}td:first-child,td:nth-child(2),th{text-align:left}caption{caption-side:bottom;font-size:.8rem;color:#555;text-align:left}
.note{color:#666;font-style:italic}pre{text-align:left;font-size:.75rem;max-height:30rem;overflow:auto;background:#fafafa;padding:.5rem}
nav a{margin-right:1rem}summary{cursor:pointer;text-align:left}
"""


def sections(rows: list[dict[str, Any]]) -> list[Section]:
    """Every section of the report for a list of store rows, in page order."""
    res = Results(rows)
    return [fn(res) for fn in SECTIONS]


def render(rows: list[dict[str, Any]], title: str, built: list[Section] | None = None) -> str:
    """The report page for a list of store rows (``built``: their sections, when already built)."""
    res = Results(rows)
    sections = built if built is not None else [fn(res) for fn in SECTIONS]
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections if s.body)
    runs = [i for i in res.runs.values()]
    summary = (
        f"<p>{len(res.rows)} result rows; {len(runs)} runs ({sum(not i.head_only for i in runs)} LoRA, "
        f"{sum(i.head_only for i in runs)} head-only) of {len(res.models())} model(s): "
        f"{html.escape(', '.join(res.models()))}. "
        f"Significance: * p&lt;0.05, ** p&lt;0.01, *** p&lt;0.001 (paired randomization over queries).</p>"
    )
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head><body>'
        f"<h1>{html.escape(title)}</h1><p>Written {created} by relevance-lens report.</p>{summary}<nav>{nav}</nav>"
        + "".join(s.html() for s in sections)
        + "</body></html>"
    )


def write_report(store: str | Path, output: str | Path = "report.html", figures: str | Path | None = None) -> Path:
    """Render the report of a results store to ``output`` (written atomically); with ``figures``, also
    write its figures (PDF, SVG, PNG) and tables (CSV, LaTeX) into that folder for a paper."""
    rows = read_rows(store)
    built = sections(rows)
    if figures is not None:  # before the page: an error here leaves neither new
        write_figures(built, figures)
    page = render(rows, f"relevance-lens report: {Path(store).name}", built)
    output = Path(output)
    with atomic_write(output) as fh:
        fh.write(page)
        fh.flush()  # the whole page in the temporary file: a kill now must still leave no report.html
        kill_point("report.page")
    return output
