"""Report section on which tokens drive a score: each chosen pair's text highlighted by its
integrated-gradients attributions, the fine-tuned reranker beside the base model with the same
trained head, with the completeness check (attributions' sum vs the score difference)."""

from __future__ import annotations

import html
from collections import defaultdict

from relevance_lens.report.figures import by_step
from relevance_lens.report.results import Results
from relevance_lens.report.tables import Section
from relevance_lens.train.rundir import FINAL

#: Variant prefixes as :mod:`relevance_lens.dissect.attribute` writes them, and their labels.
MODELS = (("adapter", "fine-tuned"), ("head-base", "base + head"))


def _highlight(tokens: list[tuple[int, str, float]]) -> str:
    """Tokens as spans shaded by attribution: red raises the score, blue lowers it (scaled per line)."""
    scale = max((abs(v) for _, _, v in tokens), default=0.0) or 1.0
    spans = []
    for _, text, value in sorted(tokens):
        alpha = min(1.0, abs(value) / scale)
        color = "220,50,47" if value > 0 else "38,139,210"
        spans.append(
            f'<span title="{value:+.4f}" style="background:rgba({color},{alpha:.2f});white-space:pre-wrap">'
            f"{html.escape(text)}</span>"
        )
    return "".join(spans)


def attribute_section(res: Results) -> Section:
    """Highlighted text per attributed pair and model, with the numbers completeness is checked by."""
    parts = []
    for ev, ev_rows in res.evals(res.get("attribute")).items():
        pairs: dict[tuple[str, str], dict[tuple[str, str], dict]] = defaultdict(dict)
        for r in ev_rows:
            model, _, pair = (r["variant"] or "").partition(" ")
            entry = pairs[r["run"], pair].setdefault((model, r["checkpoint"] or FINAL), {"tokens": []})
            if r["metric"] == "attribution":
                entry["tokens"].append((r["layer"], r["role"] or "", r["value"]))
            else:
                entry[r["metric"]] = r["value"]
        if not pairs:
            continue
        config = ev_rows[0]["config"]
        parts.append(
            f"<h3>{html.escape(ev)}</h3><p>Integrated gradients on the input embeddings, baseline "
            f"<b>{html.escape(str(config.get('baseline')))}</b>, Gauss-Legendre nodes from "
            f"{html.escape(str(config.get('steps')))}, sub-intervals halved where their own completeness check "
            f"fails (at most {html.escape(str(config.get('max_steps', config.get('steps'))))} steps). "
            "Red tokens raise the score, blue lower it (shading scaled per line; hover for "
            "the value). Gap: |Σ attributions − (score − baseline score)| relative to the difference.</p>"
        )
        for (run, pair), models in sorted(pairs.items()):
            info = res.runs.get(run)
            first = next(iter(models.values()))
            parts.append(
                f"<h4>{html.escape(info.label if info else run)}: {html.escape(pair)} "
                f"({'relevant' if first.get('relevant', 0) > 0 else 'not relevant'})</h4>"
            )
            named = any(checkpoint != FINAL for _, checkpoint in models)
            for model, label in MODELS:  # per model, its checkpoints by step: how the attributions form
                for checkpoint in sorted((c for m, c in models if m == model), key=by_step):
                    e = models[model, checkpoint]
                    parts.append(_pair_line(label + (f", {checkpoint}" if named else ""), e))
    return Section(
        "attribute",
        "Which tokens drive the score (integrated gradients)",
        "".join(parts) or None,
        "No token attributions in this store: run `relevance-lens analyze attribute ADAPTER` or add "
        "[analyses.attribute] to the study.",
    )


def _pair_line(label: str, e: dict) -> str:
    """One model's (and checkpoint's) attributions of a pair: its numbers, then its highlighted text."""
    steps = f", {e['steps']:.0f} gradient steps" if "steps" in e else ""
    return (
        f"<p><b>{html.escape(label)}</b>: score {e.get('score', float('nan')):.3f}, baseline "
        f"{e.get('baseline_score', float('nan')):.3f}, Σ attributions "
        f"{sum(v for _, _, v in e['tokens']):.3f}, gap {e.get('completeness_gap', float('nan')):.1%}{steps}"
        f"</p><p>{_highlight(e['tokens'])}</p>"
    )
