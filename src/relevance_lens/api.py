"""The Python API: what the command line does, callable from a notebook, with pandas results.

::

    from relevance_lens import api

    reranker = api.load_reranker(adapter="runs/train/final")
    reranker.score("how do i sort a list", ["use sorted(xs)", "bananas are yellow"])  # [float, float]
    run_dir = api.train(api.TrainConfig(output="runs/mine", max_steps=50))
    rows = api.analyze("weights", run_dir / "final")                                   # pandas DataFrame
    table = api.results("runs/demo/results.sqlite", analysis="checkpoints")            # pandas DataFrame
    api.export(run_dir / "final", "exported/")                                         # transformers folder

Each function calls the same library code as its command (``rerank``, ``train``, ``analyze``,
``report``'s store, ``export``), so a notebook and the CLI give the same numbers. Tidy rows come
back as a DataFrame with the results store's columns (:data:`relevance_lens.store.COLUMNS`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from relevance_lens.data.formats import Passage
from relevance_lens.dissect.settings import DEFAULT_METRICS
from relevance_lens.errors import InputError
from relevance_lens.export import ExportConfig, export_adapter
from relevance_lens.score.batching import Run
from relevance_lens.score.config import ScoreConfig
from relevance_lens.store import COLUMNS, normalize, read_results
from relevance_lens.train.config import TrainConfig

__all__ = [
    "ExportConfig",
    "LoadedReranker",
    "ScoreConfig",
    "TrainConfig",
    "analyze",
    "export",
    "load_reranker",
    "results",
    "train",
]


class LoadedReranker:
    """A reranker ready to score: ``score(query, passages)`` and ``rerank(queries, corpus, run)``.

    Scores are those of ``relevance-lens rerank`` with the same model, adapter and settings.
    """

    def __init__(self, reranker, config: ScoreConfig):
        self.reranker = reranker
        self.config = config

    @property
    def settings(self):
        """The template, max length and base model the adapter was trained with."""
        return self.reranker.settings

    def score(self, query: str, passages: Sequence[str | Passage]) -> list[float]:
        """One score per passage, in order; a string is a passage without a title."""
        from relevance_lens.score.scorer import make_scorer

        items = [(query, _passage(p, i)) for i, p in enumerate(passages)]
        if not items:
            return []
        tokens = len(items) * self.reranker.settings.max_length
        return make_scorer(self.reranker, self.config, expected_tokens=tokens).score(items)

    def rerank(
        self, queries: Mapping[str, str], corpus: Mapping[str, Passage], run: Mapping[str, Mapping[str, float]]
    ) -> Run:
        """Each query's top ``config.depth`` passages of ``run`` scored: ``{qid: {docid: score}}``."""
        from relevance_lens.score.rerank import rerank

        return rerank(self.reranker, queries, corpus, run, self.config, progress=False)


def _passage(passage: str | Passage, index: int) -> Passage:
    if isinstance(passage, Passage):
        return passage
    if isinstance(passage, str):
        return Passage(str(index), "", passage)
    raise InputError(f"passage {index}: a {type(passage).__name__}; expected a str or a Passage")


def load_reranker(
    model: str | None = None, adapter: str | Path | None = None, *, config: ScoreConfig | None = None
) -> LoadedReranker:
    """Load a base model (short name, GGUF, folder, hub id) and optionally a trained adapter folder.

    ``config`` sets precision, device and batching as ``rerank``'s options do (default: bf16 where
    the hardware is fast at it, as ``rerank --dtype auto``).
    """
    from relevance_lens.model.reranker import Reranker
    from relevance_lens.score.config import prepare

    config = config or ScoreConfig()
    return LoadedReranker(prepare(Reranker.from_pretrained(model, adapter), config), config)


def train(config: TrainConfig, *, resume: bool = False, evaluate: bool = True) -> Path:
    """Train as ``relevance-lens train`` does; returns the run folder.

    With ``evaluate`` and ``config.eval_split`` set (FAQ data), the final adapter is then
    evaluated on that split as the command does; the numbers go to ``RUNDIR/eval.<split>.json``.
    """
    from relevance_lens.train.trainer import evaluate_final
    from relevance_lens.train.trainer import train as run_training

    run_dir = run_training(config, resume=resume, progress=False)
    if evaluate and config.eval_split and config.data in ("faq", "faq+weak") and os.environ.get("RANK", "0") == "0":
        evaluate_final(run_dir, config.eval_split, config.eval_depth, progress=False)
    return run_dir


def analyze(
    name: str,
    target: str | Path | None = None,
    *,
    settings: Any = None,
    split: str | None = None,
    queries: str | Path | None = None,
    qrels: str | Path | None = None,
    corpus: str | Path | None = None,
    run: str | Path | None = None,
    depth: int = 10,
    max_queries: int | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    baseline: str | Path | None = None,
    other: str | Path | None = None,
    model: str | None = None,
    score: ScoreConfig | None = None,
    store: str | Path | None = None,
    force: bool = False,
):
    """Run one analysis (``checkpoints``, ``ablate``, ``weights``, ``lens``) as ``analyze NAME`` does.

    Returns its tidy rows as a pandas DataFrame with the store's columns. ``settings`` is the
    analysis's settings dataclass (``relevance_lens.dissect.settings``; default: its defaults).
    The eval set is a FAQ ``split`` or the four files, as on the command line. With ``store``
    the rows are appended there too (and reused unless ``force``); without, nothing is written.
    """
    from relevance_lens.dissect.evalset import resolve_evalset
    from relevance_lens.dissect.registry import Context, Inputs, analysis, run_analysis
    from relevance_lens.store import Store

    entry = analysis(name)
    inputs = Inputs(
        Path(target) if target is not None else None,
        metrics=list(metrics),
        baseline=Path(baseline) if baseline is not None else None,
        other=Path(other) if other is not None else None,
        model=model,
    )
    context = Context(store=Store(Path(store)) if store is not None else None, force=force)
    if entry.uses_eval:
        inputs.evalset = resolve_evalset(
            split, queries=queries, qrels=qrels, corpus=corpus, run=run, depth=depth, max_queries=max_queries
        )
        context.score = score or ScoreConfig(depth=depth)
    return _frame([normalize(row) for row in run_analysis(name, inputs, settings, context)])


def results(store: str | Path, **where: Any):
    """Every row of a results store as a pandas DataFrame, optionally only those matching ``where``.

    ``results("runs/demo/results.sqlite", analysis="ablate", metric="nDCG@10")``; the store is
    opened read-only, so this is safe while a study is writing to it.
    """
    unknown = sorted(set(where) - set(COLUMNS))
    if unknown:
        raise InputError(f"results: unknown columns {unknown}; expected some of {', '.join(COLUMNS)}")
    rows = read_results(store, "results")
    return _frame([r for r in rows if all(r.get(k) == v for k, v in where.items())])


def export(
    adapter: str | Path, output: str | Path, *, model: str | None = None, config: ExportConfig | None = None
) -> Path:
    """Write ``adapter`` as a transformers sequence-classification folder (see :mod:`relevance_lens.export`)."""
    return export_adapter(adapter, output, model=model, config=config)


def _frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows, columns=list(COLUMNS))
