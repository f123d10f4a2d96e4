"""The command line: bm25 -> rerank -> evaluate, and one-line errors with no partial output."""

import json
import subprocess
import sys

import pytest

from relevance_lens.data.formats import read_run
from tiny import save_tiny
from trainfix import write_collection


def cli(*args):
    return subprocess.run([sys.executable, "-m", "relevance_lens", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    paths = write_collection(folder)
    paths["model"] = str(save_tiny("llama", folder / "model"))
    paths["dir"] = folder
    return paths


def test_bm25_rerank_evaluate(files):
    d = files["dir"]
    r = cli(
        "bm25", "--queries", files["queries"], "--corpus", files["corpus"], "--output", d / "bm25.run", "--depth", 5
    )
    assert r.returncode == 0, r.stderr
    r = cli(
        "rerank",
        "--model",
        files["model"],
        "--queries",
        files["queries"],
        "--corpus",
        files["corpus"],
        "--run",
        d / "bm25.run",
        "--output",
        d / "rr.run",
        "--depth",
        3,
        "--dtype",
        "fp32",
    )
    assert r.returncode == 0, r.stderr
    reranked, first = read_run(d / "rr.run"), read_run(d / "bm25.run")
    assert len(reranked) == 6
    for qid, docs in first.items():  # the top 3 reranked, then BM25's tail in BM25's order
        assert list(reranked[qid])[3:] == list(docs)[3:] and set(list(reranked[qid])[:3]) == set(list(docs)[:3])
    r = cli(
        "evaluate",
        "--qrels",
        files["qrels"],
        "--run",
        d / "rr.run",
        "--queries",
        files["queries"],
        "--json",
        "--metrics",
        "RR@10",
        "--metrics",
        "nDCG@10",
    )
    assert r.returncode == 0, r.stderr
    values = json.loads(r.stdout)
    assert set(values) == {"RR@10", "nDCG@10"} and 0 <= values["RR@10"] <= 1
    assert "scored 6 queries" in r.stderr


def test_evaluate_reports_missing_queries(files, tmp_path):
    (tmp_path / "one.run").write_text("q0 Q0 d0 1 1.0 x\n")
    r = cli(
        "evaluate", "--qrels", files["qrels"], "--run", tmp_path / "one.run", "--queries", files["queries"], "--json"
    )
    assert r.returncode == 0
    assert json.loads(r.stdout)["RR@10"] == pytest.approx(1 / 6)
    assert "scored 6 queries; 5 had no result" in r.stderr


@pytest.mark.parametrize(
    "run_line,expected",
    [
        ("q0 Q0 nosuchdoc 1 1.0 x\n", "nosuchdoc"),
        ("q0 Q0 d0 1\n", ":1:"),
        ("q0 Q0 d0 one 1.0 x\n", ":1:"),
    ],
)
def test_rerank_bad_run_is_one_line_and_writes_nothing(files, tmp_path, run_line, expected):
    (tmp_path / "bad.run").write_text(run_line)
    out = tmp_path / "out.run"
    r = cli(
        "rerank",
        "--model",
        files["model"],
        "--queries",
        files["queries"],
        "--corpus",
        files["corpus"],
        "--run",
        tmp_path / "bad.run",
        "--output",
        out,
    )
    assert r.returncode == 2
    assert expected in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_unknown_metric_is_refused(files, tmp_path):
    r = cli("evaluate", "--qrels", files["qrels"], "--run", files["negatives_run"], "--metrics", "nDGC@10")
    assert r.returncode == 2 and "nDGC@10" in r.stderr


def test_bm25_with_no_queries_is_refused_and_writes_nothing(files, tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    out = tmp_path / "bm25.run"
    r = cli("bm25", "--queries", empty, "--corpus", files["corpus"], "--output", out)
    assert r.returncode == 2 and "no queries" in r.stderr and str(empty) in r.stderr and not out.exists()


@pytest.mark.slow
def test_real_model_reranks_a_real_faq_slice(tmp_path):
    """rerank -> evaluate with the embedded SmolLM2 on 5 FAQ test queries (untrained head)."""
    from relevance_lens.data.faq import faq_paths, load_faq
    from relevance_lens.data.formats import write_queries, write_run

    data = load_faq("test")
    qids = sorted(data.queries)[:5]
    write_queries({q: data.queries[q] for q in qids}, tmp_path / "q.tsv")
    write_run({q: data.run[q] for q in qids}, tmp_path / "bm25.run")
    r = cli(
        "rerank",
        "--model",
        "smollm2-135m",
        "--queries",
        tmp_path / "q.tsv",
        "--corpus",
        faq_paths("test")["corpus"],
        "--run",
        tmp_path / "bm25.run",
        "--output",
        tmp_path / "rr.run",
        "--depth",
        5,
        "--drop-tail",
    )
    assert r.returncode == 0, r.stderr
    reranked = read_run(tmp_path / "rr.run")
    assert sorted(reranked) == qids and all(len(v) == 5 for v in reranked.values())
    # The reranker reorders: at least one query's order differs from BM25's.
    bm25_order = {q: sorted(data.run[q], key=lambda d: -data.run[q][d])[:5] for q in qids}
    rr_order = {q: sorted(reranked[q], key=lambda d: -reranked[q][d]) for q in qids}
    assert any(bm25_order[q] != rr_order[q] for q in qids)
    assert all(set(bm25_order[q]) == set(rr_order[q]) for q in qids)
    r = cli(
        "evaluate",
        "--qrels",
        faq_paths("test")["qrels"],
        "--run",
        tmp_path / "rr.run",
        "--queries",
        tmp_path / "q.tsv",
        "--json",
    )
    assert r.returncode == 0 and "scored 5 queries" in r.stderr
