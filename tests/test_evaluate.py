"""Evaluation: hand-computable metric values and which queries are scored."""

from __future__ import annotations

import json
import math

import pytest
from rich.console import Console

from relevance_lens.errors import InputError
from relevance_lens.evaluate.metrics import DEFAULT_METRICS, Evaluation, evaluate, format_table, parse_metrics

QRELS = {
    "1": {"a": 1, "b": 0},  # relevant doc at rank 2 in RUN
    "2": {"c": 1},  # relevant doc at rank 1
    "3": {"d": 1},  # absent from RUN
}
RUN = {
    "1": {"x": 3.0, "a": 2.0, "b": 1.0},
    "2": {"c": 5.0, "y": 1.0},
}


def _value(evaluation: Evaluation, qid: str, metric: str) -> float:
    matches = [v for q, m, v in evaluation.per_query if q == qid and m == metric]
    assert len(matches) == 1
    return matches[0]


def test_reciprocal_rank_by_hand():
    result = evaluate(QRELS, RUN, ["RR@10"])
    assert _value(result, "1", "RR@10") == pytest.approx(0.5)
    assert _value(result, "2", "RR@10") == pytest.approx(1.0)
    assert result.aggregate == {"RR@10": pytest.approx(0.75)}
    assert (result.n_queries, result.n_missing, result.n_unjudged) == (2, 0, 0)


def test_ndcg_and_recall_by_hand():
    result = evaluate(QRELS, RUN, ["nDCG@10", "R@100"])
    # One relevant doc at rank 2: DCG = 1/log2(3), ideal DCG = 1.
    assert _value(result, "1", "nDCG@10") == pytest.approx(1 / math.log2(3))
    assert _value(result, "1", "R@100") == pytest.approx(1.0)


def test_query_missing_from_run_scores_zero_when_asked_for():
    result = evaluate(QRELS, RUN, ["RR@10", "nDCG@10"], query_ids=["1", "2", "3"])
    assert (result.n_queries, result.n_missing) == (3, 1)
    assert _value(result, "3", "RR@10") == 0.0
    assert _value(result, "3", "nDCG@10") == 0.0
    assert result.aggregate["RR@10"] == pytest.approx(1.5 / 3)
    assert len(result.per_query) == 3 * 2


def test_query_ids_restrict_both_qrels_and_run():
    result = evaluate(QRELS, RUN, ["RR@10"], query_ids=["1"])
    assert result.per_query == [("1", "RR@10", pytest.approx(0.5))]
    assert result.aggregate["RR@10"] == pytest.approx(0.5)


def test_without_query_ids_scores_judged_run_queries_and_counts_unjudged():
    run = {**RUN, "99": {"a": 1.0}}
    result = evaluate(QRELS, run, ["RR@10"])
    assert [q for q, _, _ in result.per_query] == ["1", "2"]
    assert (result.n_queries, result.n_unjudged) == (2, 1)


def test_unjudged_query_ids_are_an_error():
    with pytest.raises(InputError, match=r"2 of 3 queries have no relevance judgements .*'98', '99'"):
        evaluate(QRELS, RUN, query_ids=["1", "98", "99"])


def test_nothing_judged_is_an_error():
    with pytest.raises(InputError, match="none of the 1 queries in the run has relevance judgements"):
        evaluate(QRELS, {"42": {"a": 1.0}})


def test_same_number_for_query_and_doc_ids_is_not_conflated():
    qrels = {"5": {"5": 1}}
    run = {"5": {"6": 2.0, "5": 1.0}}
    assert evaluate(qrels, run, ["RR@10"]).aggregate["RR@10"] == pytest.approx(0.5)


def test_per_query_is_complete_and_sorted():
    result = evaluate(QRELS, RUN, DEFAULT_METRICS, query_ids=["3", "2", "1"])
    keys = [(q, m) for q, m, _ in result.per_query]
    assert keys == [(q, m) for q in ["1", "2", "3"] for m in DEFAULT_METRICS]
    assert list(result.aggregate) == list(DEFAULT_METRICS)


def test_metric_named_as_written():
    result = evaluate(QRELS, RUN, ["MRR@10"])
    assert result.aggregate == {"MRR@10": pytest.approx(0.75)}


@pytest.mark.parametrize("names", [["nDCG@10", "bogus"], ["nDCG@x"], []])
def test_unknown_metric_is_input_error(names):
    with pytest.raises(InputError, match="ir_measures names such as nDCG@10"):
        parse_metrics(names)


def test_duplicate_metric_is_input_error():
    with pytest.raises(InputError, match="'MRR@10' is the same measure as 'RR@10'"):
        parse_metrics(["RR@10", "MRR@10"])


def test_to_json_is_serialisable():
    data = evaluate(QRELS, RUN, ["RR@10"]).to_json()
    assert json.loads(json.dumps(data))["per_query"][0] == {"query_id": "1", "metric": "RR@10", "value": 0.5}
    assert data["n_queries"] == 2


def test_format_table_rows_and_columns():
    evals = {"BM25": evaluate(QRELS, RUN, ["RR@10"]), "reranker": evaluate(QRELS, RUN, ["RR@10", "R@100"])}
    table = format_table(evals)
    assert [c.header for c in table.columns] == ["system", "RR@10", "R@100", "n"]
    console = Console(width=120, record=True)
    console.print(table)
    text = console.export_text()
    assert "BM25" in text and "reranker" in text and "0.7500" in text
