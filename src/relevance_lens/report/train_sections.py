"""Report sections on training: how ranking quality emerges over checkpoints, and how the
final adapters compare across LoRA ranks and targets (MHA, MLP, both)."""

from __future__ import annotations

import html
from collections import defaultdict

from relevance_lens.evaluate.stats import holm
from relevance_lens.report.figures import (
    TARGET_STYLES,
    _colors,
    _lines_by_model,
    _reference_lines,
    _step_axis,
    slug,
)
from relevance_lens.report.results import Results, _metrics
from relevance_lens.report.tables import Parts, Section, Table, _fmt
from relevance_lens.train.rundir import FINAL, step_of


def checkpoint_section(res: Results) -> Section:
    """Metric over training steps per model and run, with BM25 and the head-only run."""
    rows = res.get("checkpoints")
    parts = Parts()
    for ev, ev_rows in res.evals(rows).items():
        for metric in _metrics(ev_rows):
            m_rows = [r for r in ev_rows if r["metric"] == metric]

            def draw(ax, model, mine, style, m_rows=m_rows, metric=metric):
                runs = sorted(
                    {r["run"] for r in mine if not res.runs[r["run"]].head_only},
                    key=lambda x: (res.runs[x].targets, res.runs[x].rank or 0),
                )
                colors = _colors([res.runs[x].rank for x in runs], sequential=True)
                heads = sorted({r["run"] for r in mine if res.runs[r["run"]].head_only})
                for run in runs + heads:
                    pts = sorted(
                        (step_of(r["checkpoint"]), r["value"])
                        for r in mine
                        if r["run"] == run and step_of(r["checkpoint"])
                    )
                    info = res.runs[run]
                    style = (
                        dict(color="black", linewidth=0.8)
                        if info.head_only
                        else dict(color=colors[info.rank], linestyle=TARGET_STYLES.get(info.targets, "-."))
                    )
                    if pts:
                        ax.plot(
                            *zip(*pts),
                            marker="o",
                            markersize=3,
                            label=f"{info.label} s{info.seed}" if info.seed is not None else info.label,
                            **style,
                        )
                _reference_lines(ax, res, mine, metric, m_rows)
                _step_axis(ax, {step_of(r["checkpoint"]) for r in mine if step_of(r["checkpoint"])})

            parts.add(f"<h3>{html.escape(ev)}: {html.escape(metric)}</h3>")
            name = slug("checkpoints", metric, ev)
            parts.plot(_lines_by_model(res, m_rows, metric, draw, name, f"checkpoint curves {ev} {metric}"))
            parts.table(_checkpoint_table(res, m_rows, metric, name))
    return parts.section(
        "checkpoints",
        "How ranking quality emerges over training",
        "No checkpoint evaluations in this store (analysis 'checkpoints').",
    )


def _checkpoint_table(res: Results, rows: list[dict], metric: str, name: str) -> Table:
    steps = sorted({step_of(r["checkpoint"]) for r in rows if step_of(r["checkpoint"])})
    runs = sorted(
        {r["run"] for r in rows if r["run"] in res.runs and r["checkpoint"] != "bm25"},
        key=lambda x: (res.runs[x].model, not res.runs[x].head_only, res.runs[x].targets, res.runs[x].rank or 0),
    )
    cells = {(r["run"], step_of(r["checkpoint"])): r for r in rows}
    body = [
        [res.runs[run].model, res.runs[run].label, run]
        + [_fmt(cells[run, s]["value"], cells[run, s]["p_value"]) if (run, s) in cells else "-" for s in steps]
        for run in runs
    ]
    return Table(
        name,
        ["model", "run", "run folder"] + [f"step {s}" for s in steps],
        body,
        f"{metric} per checkpoint; marks: paired randomization p vs the head-only run's final (vs BM25 for the "
        f"head-only run "
        "or when the study has none), unadjusted",
    )


def _finals(res: Results, rows: list[dict], metric: str) -> dict[tuple[str, str, int], list[dict]]:
    out: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in rows:
        info = res.runs.get(r["run"])
        if r["metric"] == metric and r["checkpoint"] == FINAL and info and not info.head_only and info.rank is not None:
            out[info.model, info.targets, info.rank].append(r)
    return out


def ranks_section(res: Results) -> Section:
    """Final metric against LoRA rank, one line per targets; the table Holm-adjusts per model."""
    parts = Parts()
    for ev, ev_rows in res.evals(res.get("checkpoints")).items():
        for metric in _metrics(ev_rows):
            finals = _finals(res, ev_rows, metric)
            if not finals:
                continue
            m_rows = [r for r in ev_rows if r["metric"] == metric]

            def draw(ax, model, mine, style, finals=finals, metric=metric, m_rows=m_rows):
                for targets in sorted({k[1] for k in finals if k[0] == model}):
                    pts = sorted((k[2], _mean(v)) for k, v in finals.items() if k[0] == model and k[1] == targets)
                    ax.plot(*zip(*pts), marker="o", linestyle=TARGET_STYLES.get(targets, "-."), label=targets)
                _reference_lines(ax, res, mine, metric, m_rows)
                ax.set_xscale("log", base=2)
                ranks = sorted({k[2] for k in finals})
                ax.set_xticks(ranks, [str(r) for r in ranks])
                ax.set_xlabel("LoRA rank")

            parts.add(f"<h3>{html.escape(ev)}: {html.escape(metric)}</h3>")
            name = slug("ranks", metric, ev)
            parts.plot(
                _lines_by_model(
                    res,
                    [r for r in m_rows if r["checkpoint"] == FINAL or r["checkpoint"] == "bm25"],
                    metric,
                    draw,
                    name,
                    f"ranks {ev} {metric}",
                )
            )
            parts.table(_grid_table(finals, metric, name))
    return parts.section(
        "ranks",
        "LoRA rank 1 / 2 / 8 / 32 compared",
        "No final-adapter evaluations of LoRA runs in this store (analysis 'checkpoints').",
    )


def _mean(rows: list[dict]) -> float:
    return sum(r["value"] for r in rows) / len(rows)


def _grid_table(finals: dict[tuple[str, str, int], list[dict]], metric: str, name: str) -> Table:
    ranks = sorted({k[2] for k in finals})
    adjusted: dict[tuple, float] = {}
    for model in {k[0] for k in finals}:
        keys = [k for k in finals if k[0] == model and len(finals[k]) == 1 and finals[k][0]["p_value"] is not None]
        adjusted.update(zip(keys, holm([finals[k][0]["p_value"] for k in keys])))
    body = []
    for model, targets in sorted({(k[0], k[1]) for k in finals}):
        cells = []
        for rank in ranks:
            found = finals.get((model, targets, rank))
            cells.append(
                "-"
                if not found
                else _fmt(_mean(found), adjusted.get((model, targets, rank)))
                + (f" (n={len(found)})" if len(found) > 1 else "")
            )
        body.append([model, targets] + cells)
    return Table(
        name,
        ["model", "targets"] + [f"r{r}" for r in ranks],
        body,
        f"final {metric}; marks: Holm-adjusted (per model) paired randomization p vs the head-only run (vs "
        f"BM25 without one)",
    )


def targets_section(res: Results) -> Section:
    """MHA-only vs MLP-only vs both: grouped bars per rank."""
    parts = Parts()
    for ev, ev_rows in res.evals(res.get("checkpoints")).items():
        for metric in _metrics(ev_rows):
            finals = _finals(res, ev_rows, metric)
            if not finals or len({k[1] for k in finals}) < 2:
                continue
            m_rows = [r for r in ev_rows if r["metric"] == metric]

            def draw(ax, model, mine, style, finals=finals, metric=metric, m_rows=m_rows):
                targets = sorted({k[1] for k in finals if k[0] == model}, key=lambda t: (t != "mha", t != "mlp", t))
                ranks = sorted({k[2] for k in finals if k[0] == model})
                width = 0.8 / max(1, len(targets))
                for i, t in enumerate(targets):
                    xs = [j + i * width for j, r in enumerate(ranks) if (model, t, r) in finals]
                    ys = [_mean(finals[model, t, r]) for r in ranks if (model, t, r) in finals]
                    ax.bar(xs, ys, width=width, label=t)
                ax.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(ranks))], [f"r{r}" for r in ranks])
                _reference_lines(ax, res, mine, metric, m_rows)

            parts.add(f"<h3>{html.escape(ev)}: {html.escape(metric)}</h3>")
            parts.plot(
                _lines_by_model(
                    res,
                    [r for r in m_rows if r["checkpoint"] in (FINAL, "bm25")],
                    metric,
                    draw,
                    slug("targets", metric, ev),
                    f"targets {ev} {metric}",
                )
            )
    return parts.section(
        "targets",
        "MHA-only vs MLP-only vs both",
        "Needs final evaluations of runs with at least two different targets (e.g. mha and mlp).",
    )
