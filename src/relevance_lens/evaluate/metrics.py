"""Score runs against qrels with ir_measures, keeping every per-query value.

The maths is ir_measures' (trec_eval underneath); this module only decides *which*
queries are scored, so that two systems are always compared over the same set and
paired significance tests get one value per query and metric, zeros included, and which
grade a binary measure counts as relevant: TREC DL's binary measures (RR, R, P, AP) count
grade >= 2 of its 0-3 scale (ir_measures' ``rel=2``), which :func:`binary_relevance_level`
applies by the collection's name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ir_measures
from rich.table import Table

from relevance_lens.errors import InputError

DEFAULT_METRICS = ("nDCG@10", "RR@10", "R@100")
#: ir_datasets ids with this in them are TREC Deep Learning collections (msmarco-passage/trec-dl-2019/judged).
TREC_DL = "trec-dl"
_EXAMPLES = 5


@dataclass
class Evaluation:
    """Metric values for one run.

    Args:
        aggregate: metric name, as the caller wrote it (``"nDCG@10"``), to the mean
            over the scored queries.
        per_query: ``(query_id, metric, value)`` for every scored query and metric,
            sorted by query id then metric order; queries missing from the run are 0.
        n_queries: how many queries were scored.
        n_missing: how many scored queries had no result in the run (scored 0).
        n_unjudged: queries in the run left out because they have no qrels (only when
            no ``query_ids`` were given); worth a warning, as it often means mismatched files.
        metrics: the metric names in the order given.
    """

    aggregate: dict[str, float]
    per_query: list[tuple[str, str, float]]
    n_queries: int
    n_missing: int
    n_unjudged: int = 0
    metrics: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the same fields; per-query rows become objects."""
        return {
            "aggregate": dict(self.aggregate),
            "n_queries": self.n_queries,
            "n_missing": self.n_missing,
            "n_unjudged": self.n_unjudged,
            "metrics": list(self.metrics),
            "per_query": [{"query_id": q, "metric": m, "value": v} for q, m, v in self.per_query],
        }


def binary_relevance_level(dataset_id: str | None = None, setting: int | None = None) -> int:
    """The grade from which binary measures count a passage as relevant.

    ``setting`` when given; else 2 for TREC DL (an ir_datasets id containing ``trec-dl``),
    whose binary measures count grade >= 2 (its 1 means "related", not relevant); else 1.

    Raises:
        InputError: a setting below 1.
    """
    if setting is not None:
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
            raise InputError(f"binary_relevance_level {setting!r}: expected a grade of at least 1 (TREC DL: 2)")
        return setting
    return 2 if dataset_id and TREC_DL in dataset_id else 1


def with_relevance_level(measure: Any, level: int) -> Any:
    """``measure`` counting grade >= ``level`` as relevant, if it is a binary measure (has ir_measures'
    ``rel`` parameter) whose name did not set ``rel`` itself; graded measures (nDCG) are unchanged."""
    if level == 1 or "rel" not in measure.SUPPORTED_PARAMS or "rel" in measure.params:
        return measure
    return measure(rel=level)


def parse_metrics(names: Sequence[str], binary_relevance_level: int = 1) -> list[Any]:
    """Parse metric names with ``ir_measures.parse_measure``; binary measures count grade >=
    ``binary_relevance_level`` as relevant unless the name says otherwise (``RR(rel=3)@10``).

    Raises:
        InputError: an unknown name, no names at all, or two names for one measure
            (e.g. ``MRR@10`` and ``RR@10``).
    """
    if isinstance(names, str) or not names:
        raise InputError(f"metrics={names!r}: expected a list of ir_measures names such as nDCG@10, RR@10, R@100")
    measures: list[Any] = []
    for name in names:
        measure = with_relevance_level(_parse_one(name), binary_relevance_level)
        if measure in measures:
            first = names[measures.index(measure)]
            raise InputError(f"metric {name!r} is the same measure as {first!r}; list each metric once")
        measures.append(measure)
    return measures


def _parse_one(name: str) -> Any:
    try:
        return ir_measures.parse_measure(name)
    except Exception:  # ir_measures raises NameError, ValueError or SyntaxError by case
        raise InputError(
            f"unknown metric {name!r}: expected ir_measures names such as nDCG@10, RR@10, R@100, AP"
        ) from None


def evaluate(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    query_ids: Iterable[str] | None = None,
    binary_relevance_level: int = 1,
) -> Evaluation:
    """Score ``run`` against ``qrels``.

    With ``query_ids``, exactly those queries are scored: a query absent from the run
    scores 0 for every metric, and one without qrels is an error. Without it, the
    queries in the run that have qrels are scored (judged queries the run skipped are
    then not counted, so pass ``query_ids`` when comparing systems).

    Args:
        qrels: ``{qid: {docid: relevance}}``.
        run: ``{qid: {docid: score}}``.
        metrics: ir_measures names; results are keyed by these strings.
        query_ids: the queries to score, or None for the judged queries of the run.
        binary_relevance_level: binary measures (RR, R, P, AP) count grade >= this as
            relevant (2 for TREC DL; :func:`binary_relevance_level`); results keep the names given.

    Raises:
        InputError: bad metric names, queries that cannot be scored, or nothing to score.
    """
    names = list(metrics)
    measures = parse_metrics(names, binary_relevance_level)
    scored, n_unjudged = _scored_queries(qrels, run, query_ids)
    values = _per_query_values(qrels, run, scored, measures, names)
    per_query = [(qid, name, values[qid, name]) for qid in sorted(scored) for name in names]
    return Evaluation(
        aggregate=_aggregate(values, scored, measures, names),
        per_query=per_query,
        n_queries=len(scored),
        n_missing=sum(1 for qid in scored if not run.get(qid)),
        n_unjudged=n_unjudged,
        metrics=names,
    )


def _scored_queries(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    query_ids: Iterable[str] | None,
) -> tuple[list[str], int]:
    """Decide which queries count; return them with the number of unjudged run queries."""
    if query_ids is None:
        judged = [qid for qid in run if qrels.get(qid)]
        if not judged:
            raise InputError(
                f"none of the {len(run)} queries in the run has relevance judgements "
                f"(run ids e.g. {_examples(run)}, qrels ids e.g. {_examples(qrels)}); "
                "check that the run and qrels are for the same queries"
            )
        return judged, len(run) - len(judged)
    wanted = list(dict.fromkeys(query_ids))
    if not wanted:
        raise InputError("query_ids is empty: expected at least one query to score")
    unjudged = [qid for qid in wanted if not qrels.get(qid)]
    if unjudged:
        raise InputError(
            f"{len(unjudged)} of {len(wanted)} queries have no relevance judgements and cannot be scored "
            f"(e.g. {_examples(unjudged)}); score only judged queries, or check the qrels file"
        )
    return wanted, 0


def _per_query_values(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    scored: list[str],
    measures: list[Any],
    names: list[str],
) -> dict[tuple[str, str], float]:
    """One value per (query, metric); zeros first, so a query the run skipped stays 0."""
    values = {(qid, name): 0.0 for qid in scored for name in names}
    # Plain int/float copies: pytrec_eval rejects numpy scalars.
    sub_qrels = {qid: {doc: int(rel) for doc, rel in qrels[qid].items()} for qid in scored}
    sub_run = {qid: {doc: float(s) for doc, s in run[qid].items()} for qid in scored if run.get(qid)}
    name_of = {str(measure): name for measure, name in zip(measures, names)}
    for metric in ir_measures.iter_calc(measures, sub_qrels, sub_run):
        key = (metric.query_id, name_of[str(metric.measure)])
        if key in values:
            values[key] = float(metric.value)
    return values


def _aggregate(
    values: dict[tuple[str, str], float],
    scored: list[str],
    measures: list[Any],
    names: list[str],
) -> dict[str, float]:
    """Aggregate with each measure's own ir_measures aggregator (a mean for these)."""
    aggregate = {}
    for measure, name in zip(measures, names):
        aggregator = measure.aggregator()
        for qid in scored:
            aggregator.add(values[qid, name])
        aggregate[name] = float(aggregator.result())
    return aggregate


def _examples(ids: Iterable[str]) -> str:
    shown = []
    for qid in ids:
        if len(shown) == _EXAMPLES:
            break
        shown.append(repr(qid))
    return ", ".join(shown) if shown else "none"


def format_table(evals: Mapping[str, Evaluation], digits: int = 4) -> Table:
    """A rich table: one row per system, one column per metric, then the query count.

    Args:
        evals: system name (``"BM25"``, ``"reranker"``) to its evaluation, in display order.
        digits: decimals shown for metric values.
    """
    metrics: list[str] = []
    for evaluation in evals.values():
        metrics.extend(name for name in evaluation.aggregate if name not in metrics)
    table = Table()
    table.add_column("system")
    for name in metrics:
        table.add_column(name, justify="right")
    table.add_column("n", justify="right")
    for system, evaluation in evals.items():
        cells = [_cell(evaluation.aggregate.get(name), digits) for name in metrics]
        table.add_row(system, *cells, str(evaluation.n_queries))
    return table


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
