"""Report section on a recipe search: every tried setting's dev curve (the chosen one marked),
the table of tried settings with their dev numbers, and the chosen setting's single test number
beside BM25. Read from the search's choice rows and the ``checkpoints`` rows they name."""

from __future__ import annotations

import html
from functools import partial

from relevance_lens.report.figures import Plot, Style, _figure, _legend, _step_axis, slug
from relevance_lens.report.results import Results
from relevance_lens.report.tables import Parts, Section, Table, _fmt
from relevance_lens.train.rundir import FINAL, step_of


def _on(config: dict, ev: dict) -> bool:
    """Whether a checkpoints row's config is on eval set ``ev`` (name, depth, query cut)."""
    return (
        config.get("eval") == ev["name"]
        and config.get("depth") == ev["depth"]
        and config.get("max_queries") == ev["max_queries"]
    )


def _setting(setting: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items())


def search_section(res: Results) -> Section:
    """Per recipe search: the dev curves, the tried settings' table, and the test number."""
    parts = Parts()
    for choice in res.choices:
        c = choice["config"]
        metric, dev, test = c["metric"], c["select_on"], c["test"]
        rows = [r for r in res.get("checkpoints") if r["metric"] == metric]
        on_dev = [r for r in rows if _on(r["config"], dev)]
        steps = {r["run"]: r["value"] for r in res.get("train") if r["metric"] == "steps"}
        title = f"{choice['model']} r{choice['rank']} {choice['targets']}: {metric} on {dev['name']}"
        parts.add(f"<h3>{html.escape(title)} ({html.escape(choice['run'])})</h3>")
        name = slug("search", choice["model"], f"r{choice['rank']}", choice["targets"], metric, dev["name"])
        parts.plot(
            Plot(
                name,
                f"search dev curves {dev['name']} {metric}",
                partial(_curves, c, on_dev, steps, metric, dev["name"]),
            )
        )
        body = [
            [_setting(t["setting"]), t["run"], _fmt(t["value"]), "chosen" if t["run"] == c["chosen"] else ""]
            for t in c["tried"]
        ]
        parts.table(
            Table(
                name,
                ["setting", "run folder", f"{dev['name']} {metric} (final)", ""],
                body,
                f"chosen: the highest final {metric} on {dev['name']} (ties: the first listed)",
            )
        )
        parts.add(_test_line(c, [r for r in rows if _on(r["config"], test)], metric))
    return parts.section(
        "search",
        "Recipe search: dev curves and the chosen setting",
        "No recipe search in this store (a study's [search] table).",
    )


def _curves(c: dict, rows: list[dict], steps: dict[str, float], metric: str, ev: str, style: Style):
    """One line per tried setting over training steps (the final adapter at the run's last step)."""
    fig, (ax,) = _figure(1, style)
    seen: set[int] = set()
    for t in c["tried"]:
        mine = [r for r in rows if r["run"] == t["run"]]
        pts = {step_of(r["checkpoint"]): r["value"] for r in mine if step_of(r["checkpoint"])}
        final = [r["value"] for r in mine if r["checkpoint"] == FINAL]
        if final and t["run"] in steps:
            pts.setdefault(int(steps[t["run"]]), final[-1])
        if not pts:
            continue
        seen |= set(pts)
        chosen = t["run"] == c["chosen"]
        ax.plot(
            *zip(*sorted(pts.items())),
            marker="o",
            markersize=5 if chosen else 3,
            linewidth=2.6 if chosen else 1.0,
            label=_setting(t["setting"]) + (" (chosen)" if chosen else ""),
        )
    bm25 = [r["value"] for r in rows if r["checkpoint"] == "bm25"]
    if bm25:
        ax.axhline(bm25[0], color="grey", linestyle="--", linewidth=1, label="BM25")
    if seen:
        _step_axis(ax, seen)
    ax.set_ylabel(f"{metric} on {ev}")
    ax.grid(alpha=0.3)
    _legend(fig, [ax], style)
    return fig


def _test_line(c: dict, rows: list[dict], metric: str) -> str:
    """The chosen run's one test number beside BM25's, or a note that it is not stored yet."""
    name = html.escape(c["test"]["name"])
    final = [r for r in rows if r["run"] == c["chosen"] and r["checkpoint"] == FINAL]
    bm25 = [r for r in rows if r["run"] == c["chosen"] and r["checkpoint"] == "bm25"]
    if not final:
        return f'<p class="note">No {name} number yet for the chosen run (its test cell has not run).</p>'
    r = final[-1]
    base = _fmt(bm25[-1]["value"]) if bm25 else "-"
    return (
        f"<p>Chosen setting <b>{html.escape(_setting(c['setting']))}</b> ({html.escape(c['chosen'])}): {name} "
        f"{html.escape(metric)} <b>{_fmt(r['value'], r['p_value'])}</b> vs BM25 {base} over {r['n_queries']} queries "
        f"(evaluated once, for this setting only; mark: paired randomization p vs BM25).</p>"
    )
