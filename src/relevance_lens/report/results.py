"""The report's input: a results store opened read-only, its rows grouped the ways the
report's sections need them (per analysis, per eval set, per run)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relevance_lens.store import read_results

#: The variant of a recipe search's choice row (written by ``relevance_lens.study.search``, a
#: stage the report does not import; tests/test_search.py holds the two names equal).
CHOICE = "choice"
#: The metric of a study's timing rows (analysis ``study``: a cell's wall seconds, written by
#: ``relevance_lens.study.run``; tests/test_report.py holds the two names equal).
SECONDS = "seconds"

# ---------------------------------------------------------------- reading the store


def read_rows(store: str | Path) -> list[dict[str, Any]]:
    """Every row of a results store, opened read-only; config_json parsed into ``config``."""
    rows = read_results(store, "report")
    parsed: dict[str, dict] = {}
    for row in rows:
        text = row.get("config_json") or "{}"
        if text not in parsed:
            try:
                parsed[text] = json.loads(text)
            except json.JSONDecodeError:
                parsed[text] = {}
        row["config"] = parsed[text]
    return rows


@dataclass(frozen=True)
class RunInfo:
    """What a run was, gathered from all its rows."""

    run: str
    model: str
    rank: int | None
    targets: str
    seed: int | None

    @property
    def head_only(self) -> bool:
        """Whether the run trained the score head only (no LoRA adapter)."""
        return self.targets == "none"

    @property
    def label(self) -> str:
        """``head only`` or ``r<rank> <targets>``, for legends and tables."""
        return "head only" if self.head_only else f"r{self.rank} {self.targets}"


class Results:
    """Rows grouped the ways the sections need them."""

    def __init__(self, rows: list[dict[str, Any]]):
        # A recipe search's choice rows are keyed by the search, not a run: kept apart.
        self.choices = [r for r in rows if r["analysis"] == "search" and r["variant"] == CHOICE]
        # The study's bookkeeping rows are not results; its timings are shown apart, in the configs section.
        self.timings = [r for r in rows if r["analysis"] == "study" and r["metric"] == SECONDS]
        self.rows = [
            r for r in rows if r["analysis"] != "study" and not (r["analysis"] == "search" and r["variant"] == CHOICE)
        ]
        self.by_analysis: dict[str, list[dict]] = defaultdict(list)
        for r in self.rows:
            self.by_analysis[r["analysis"]].append(r)
        self.runs = self._runs()

    def _runs(self) -> dict[str, RunInfo]:
        seen: dict[str, dict[str, Any]] = defaultdict(dict)
        for r in self.rows:
            info = seen[r["run"]]
            for key in ("model", "rank", "targets"):
                if r[key] is not None:
                    info.setdefault(key, r[key])
            if r["analysis"] == "train":
                info.setdefault("seed", (r["config"].get("train") or {}).get("seed"))
        return {
            run: RunInfo(run, _short(i.get("model", "?")), i.get("rank"), i.get("targets") or "?", i.get("seed"))
            for run, i in seen.items()
        }

    def models(self) -> list[str]:
        """The short names of the models with runs in the store, sorted."""
        return sorted({i.model for i in self.runs.values() if i.model != "?"})

    def get(self, analysis: str) -> list[dict]:
        """The rows of one analysis (empty when the store has none)."""
        return self.by_analysis.get(analysis, [])

    def evals(self, rows: Iterable[dict]) -> dict[str, list[dict]]:
        """Rows split by eval set (name, depth, queries), labelled for headings."""
        out: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            out[_eval_label(r["config"])].append(r)
        return dict(sorted(out.items()))


def _short(model: str) -> str:
    return Path(str(model).rstrip("/")).name or str(model)


def _eval_label(config: dict) -> str:
    name = config.get("eval", "?")
    return f"{name} (top {config.get('depth', '?')}, {config.get('n_queries', '?')} queries)"


def _metrics(rows: Iterable[dict]) -> list[str]:
    """Metric names in first-seen order (``nDCG@10 Δfull`` counts as ``nDCG@10``)."""
    seen: list[str] = []
    for r in rows:
        m = r["metric"].split(" ")[0]
        if m != "work_saved" and m not in seen:
            seen.append(m)
    return seen
