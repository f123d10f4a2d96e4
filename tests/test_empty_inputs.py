"""Every command refuses an empty input file: exit code 2, one line naming the file, nothing written.

An empty run reranked into an empty run, or an empty query file scored as "no queries", reads as
a system that found nothing; the refusal says "wrong file" instead. Each row empties one input of
an otherwise good command line (the tiny collection of ``trainfix``) and runs it through the real
entry point, ``relevance_lens.cli.main``.
"""

from __future__ import annotations

import sys

import pytest

from relevance_lens.cli import main
from trainfix import tiny_collection

NO_QUERIES, NO_PASSAGES, NO_RESULTS, NO_JUDGEMENTS = "no queries", "no passages", "no results", "no judgements"
TRAIN = ["train", "--data", "files", "--output", "{out}/run", "--max-steps", "1", "--eval-split", "none"]
TRAIN_FILES = ["--model", "{model}", "--queries", "{queries}", "--qrels", "{qrels}", "--corpus", "{corpus}"]
TRAIN_FILES += ["--negatives-run", "{negatives_run}"]
EVAL_FILES = ["--queries", "{queries}", "--qrels", "{qrels}", "--corpus", "{corpus}", "--run", "{negatives_run}"]

EMPTY_INPUTS = [
    # (command line, which input is the empty file, file name, fragment of the message)
    (
        ["rerank", "--model", "{out}/unused", "--queries", "{queries}", "--corpus", "{corpus}", "--run", "{run}"]
        + ["--output", "{out}/rr.trec"],
        "run",
        "first.run",
        NO_RESULTS,
    ),
    (
        ["rerank", "--model", "{out}/unused", "--queries", "{queries}", "--corpus", "{corpus}", "--run", "{run}"]
        + ["--output", "{out}/rr.trec"],
        "queries",
        "q.tsv",
        NO_QUERIES,
    ),
    (
        ["rerank", "--model", "{out}/unused", "--queries", "{queries}", "--corpus", "{corpus}", "--run", "{run}"]
        + ["--output", "{out}/rr.trec"],
        "corpus",
        "c.jsonl",
        NO_PASSAGES,
    ),
    (
        ["bm25", "--queries", "{queries}", "--corpus", "{corpus}", "--output", "{out}/bm25.trec"],
        "queries",
        "q.tsv",
        NO_QUERIES,
    ),
    (
        ["bm25", "--queries", "{queries}", "--corpus", "{corpus}", "--output", "{out}/bm25.trec"],
        "corpus",
        "c.tsv",
        NO_PASSAGES,
    ),
    (["evaluate", "--qrels", "{qrels}", "--run", "{run}"], "qrels", "qrels.txt", NO_JUDGEMENTS),
    (["evaluate", "--qrels", "{qrels}", "--run", "{run}"], "run", "r.trec", NO_RESULTS),
    (["evaluate", "--qrels", "{qrels}", "--run", "{run}", "--queries", "{queries}"], "queries", "q.jsonl", NO_QUERIES),
    ([*TRAIN, *TRAIN_FILES], "queries", "q.tsv", NO_QUERIES),
    ([*TRAIN, *TRAIN_FILES], "qrels", "qrels.txt", NO_JUDGEMENTS),
    ([*TRAIN, *TRAIN_FILES], "corpus", "c.jsonl", NO_PASSAGES),
    ([*TRAIN, *TRAIN_FILES], "negatives_run", "bm25.run", NO_RESULTS),
    ([*TRAIN, "--model", "{model}", "--tevatron", "{tevatron}"], "tevatron", "train.jsonl", "no training groups"),
    ([*TRAIN, *TRAIN_FILES, "--config", "{config}"], "config", "train.toml", "no settings"),
    (["study", "run", "{study}", "--workdir", "{out}/work"], "study", "study.toml", "no settings"),
    (["data", "pairs", "{pairs}", "--output", "{out}/pairs"], "pairs", "pairs.csv", "empty file"),
    (["data", "pairs", "{pairs}", "--output", "{out}/pairs"], "pairs", "pairs.jsonl", "no rows"),
    (["analyze", "ablate", "{out}/unused", *EVAL_FILES, "--store", "{out}/r.sqlite"], "queries", "q.tsv", NO_QUERIES),
    (
        ["analyze", "ablate", "{out}/unused", *EVAL_FILES, "--store", "{out}/r.sqlite"],
        "negatives_run",
        "b.run",
        NO_RESULTS,
    ),
    (["report", "{store}", "--output", "{out}/report.html"], "store", "results.sqlite", "not a relevance-lens results"),
    (["study", "merge", "{out}/merged.sqlite", "{store}"], "store", "shard.sqlite", "not a relevance-lens results"),
]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    paths = tiny_collection(tmp_path_factory.mktemp("empty-inputs"))
    return {**paths, "run": paths["negatives_run"]}


def _case_id(case) -> str:
    argv, empty, name, _ = case
    command = " ".join(a for a in argv[:2] if not a.startswith(("-", "{")))
    return f"{command}: empty {empty} {name}"


@pytest.mark.parametrize(("argv", "empty", "name", "fragment"), EMPTY_INPUTS, ids=map(_case_id, EMPTY_INPUTS))
def test_an_empty_input_is_refused_in_one_line_and_writes_nothing(
    collection, tmp_path, monkeypatch, capsys, argv, empty, name, fragment
):
    empty_file = tmp_path / "in" / name
    empty_file.parent.mkdir()
    empty_file.write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    values = {**collection, empty: str(empty_file), "out": str(out)}
    monkeypatch.setattr(sys, "argv", ["relevance-lens", *(a.format(**values) for a in argv)])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert exited.value.code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert str(empty_file) in lines[0] and fragment in lines[0], lines[0]
    assert captured.out == ""
    assert sorted(p.name for p in out.iterdir()) == [], "an output (or lock, or store) was written"
    assert sorted(p.name for p in empty_file.parent.iterdir()) == [name], "something was written beside the input"
