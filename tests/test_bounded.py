"""Bounded resources: a 10 MB line, a 100k-token query and a large run cost what a chunk costs.

Memory is measured, not timed: the peak resident set of this process (its high-water mark reset
through ``/proc/self/clear_refs``) around a CLI ``rerank``, and Python's traced allocations
(``tracemalloc``) for a run N and 10·N pairs long.
"""

import json
import random
import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relevance_lens.cli import app
from relevance_lens.data import formats
from relevance_lens.data.formats import (
    InputError,
    Passage,
    RunSpool,
    RunWriter,
    read_corpus,
    read_queries,
    read_run,
    write_run,
)
from relevance_lens.score.batching import encode_texts, pair_texts
from relevance_lens.score.config import ScoreConfig
from relevance_lens.score.rerank import rerank
from relevance_lens.score.stream import rerank_to_file
from tiny import TEXT, save_tiny, tiny_reranker

WORDS = TEXT.split()
MB = 1 << 20


def words(n: int, seed: int = 0, sep: str = " ") -> str:
    rng = random.Random(seed)
    return sep.join(rng.choice(WORDS) for _ in range(n))


# ---------------------------------------------------------------- clipping long texts


SHAPES = {
    "words": lambda n: words(n),
    "one long word": lambda n: words(n, sep=""),
    "whitespace runs": lambda n: words(n, sep="   \t "),
    "unicode": lambda n: words(n, sep=" é 日本語 🙂 "),
    "spaces then a word": lambda n: " " * (8 * n) + "paris",
}


@pytest.mark.parametrize("max_length", [8, 48])
@pytest.mark.parametrize("shape", SHAPES)
def test_clipped_fields_give_the_ids_of_the_whole_text(shape, max_length):
    reranker = tiny_reranker(max_length=max_length)
    long = SHAPES[shape](1500)
    items = [
        (long, Passage("d1", "", "paris is the capital of france")),
        ("capital of france", Passage("d2", long, long)),
        ("capital", Passage("d3", "", long)),
    ]
    whole = reranker.tokenize([reranker.format(q, p) for q, p in items])
    assert encode_texts(reranker, items) == whole
    if shape != "spaces then a word":  # few tokens in many characters: nothing to cut
        assert all(len(t) < len(long) for t in pair_texts(reranker, items))


# ---------------------------------------------------------------- long lines through the CLI


def peak_rss_growth(action) -> int:
    """Bytes the resident set peaked above its size when ``action`` started."""
    status = Path("/proc/self/status")

    def read(key: str) -> int:
        line = next(x for x in status.read_text().splitlines() if x.startswith(key))
        return int(line.split()[1]) * 1024

    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError as exc:
        pytest.skip(f"cannot reset the peak RSS here ({exc})")
    start = read("VmRSS:")
    action()
    return read("VmHWM:") - start


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(save_tiny("llama", tmp_path_factory.mktemp("bounded") / "model"))


def test_a_10mb_passage_and_a_100k_token_query_rerank_truncated_in_bounded_memory(tmp_path, tiny_model):
    """Today's CLI tokenizes every token of both before truncating: GBs of RSS for one pair."""
    passage = words(1_800_000, seed=1)[: 10 * MB]  # one 10 MB corpus line
    query = words(60_000, seed=2)  # > 100k tokens of the tiny tokenizer
    (tmp_path / "q.tsv").write_text(f"1\t{query}\n2\twhat is the capital of france\n")
    corpus = [("big", "", passage), ("a", "", "paris is the capital of france"), ("b", "", "bananas are yellow")]
    (tmp_path / "c.tsv").write_text("".join(f"{d}\t{t}\t{x}\n" for d, t, x in corpus))
    run = {"1": {"a": 3.0, "b": 2.0, "big": 1.0}, "2": {"big": 2.0, "a": 1.0}}
    write_run(run, tmp_path / "first.run")
    out = tmp_path / "out.run"
    argv = ["rerank", "--model", tiny_model, "--queries", tmp_path / "q.tsv", "--corpus", tmp_path / "c.tsv"]
    argv += ["--run", tmp_path / "first.run", "--output", out, "--dtype", "fp32"]

    def invoke():
        result = CliRunner().invoke(app, list(map(str, argv)))
        assert result.exit_code == 0, result.output

    grew = peak_rss_growth(invoke)
    assert grew < 300 * MB, f"peak RSS grew {grew / MB:.0f} MB"
    # The right answer is the one for texts cut by hand well past 256 tokens (the model's max_length).
    from relevance_lens.model.reranker import Reranker

    reranker = Reranker.from_pretrained(tiny_model).float()
    cut = {d: Passage(d, t, x[:20_000]) for d, t, x in corpus}
    expected = rerank(reranker, {"1": query[:20_000], "2": "what is the capital of france"}, cut, run, progress=False)
    got = read_run(out)
    assert got.keys() == expected.keys()
    for qid in got:
        assert got[qid] == pytest.approx(expected[qid], abs=1e-5)


# ---------------------------------------------------------------- a run N and 10·N pairs long


def collection(tmp_path: Path, queries: int, passages: int):
    qs = {str(q): words(6, seed=q) for q in range(queries)}
    docs = {f"d{d}": Passage(f"d{d}", "", words(12, seed=1000 + d)) for d in range(passages)}
    (tmp_path / "q.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in qs.items()))
    (tmp_path / "c.tsv").write_text("".join(f"{d}\t\t{p.text}\n" for d, p in docs.items()))
    return qs, docs


def write_first_stage(path: Path, queries, passages, depth: int, seed: int = 0, grouped: bool = True):
    """A run with ``depth`` results per query; ungrouped: lines shuffled across queries."""
    rng = random.Random(seed)
    lines = []
    for qid in queries:
        for rank, docid in enumerate(rng.sample(sorted(passages), depth), 1):
            lines.append(f"{qid} Q0 {docid} {rank} {rng.uniform(0, 30)!r} bm25\n")
    if not grouped:
        rng.shuffle(lines)
    path.write_text("".join(lines))


def traced_peak(action, *args) -> int:
    tracemalloc.start()
    try:
        action(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streamed_rerank_memory_does_not_grow_with_the_run(tmp_path):
    """N vs 10·N pairs: the dict path holds the run three times over; the stream holds one chunk."""
    qs, docs = collection(tmp_path, queries=20, passages=400)
    reranker = tiny_reranker(max_length=8)
    config = ScoreConfig(depth=400, chunk_pairs=64, dtype="fp32", compile="off")

    def stream(first, out):
        with RunSpool(first, queries=qs, corpus=docs) as run:
            rerank_to_file(reranker, qs, docs, run, out, config, progress=False)

    def whole(first, out):
        write_run(rerank(reranker, qs, docs, read_run(first, queries=qs, corpus=docs), config, progress=False), out)

    growth = {}
    for path in (stream, whole):
        peaks = []
        for depth in (20, 200):
            first = tmp_path / f"first{depth}.run"
            write_first_stage(first, qs, docs, depth)
            peaks.append(traced_peak(path, first, tmp_path / f"{path.__name__}{depth}.run"))
        growth[path.__name__] = peaks[1] - peaks[0]
    # 3,600 more pairs: the dict path grows by ~260 bytes per pair (measured 931 kB); the stream by
    # one query's results and allocator noise (measured under 100 kB in one run, 115 kB in another).
    assert growth["stream"] < 250_000, growth
    assert growth["stream"] * 4 < growth["whole"], growth  # the bound means something
    assert (tmp_path / "stream200.run").read_bytes() == (tmp_path / "whole200.run").read_bytes()


# ---------------------------------------------------------------- the stream equals the dict path


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_rerank_to_file_writes_the_bytes_of_rerank_then_write_run(tmp_path, fast):
    qs, docs = collection(tmp_path, queries=12, passages=40)
    qs["q-x"] = "what is the capital of france"  # a non-numeric id sorts apart from the numbers
    first = tmp_path / "first.run"
    write_first_stage(first, qs, docs, depth=15, grouped=False)  # each query in many stretches
    reranker = tiny_reranker(max_length=24)
    # depth cuts each query's 15; chunks of 7 cut queries across chunk boundaries.
    config = ScoreConfig(depth=10, chunk_pairs=7, fast=fast, compile="off")
    write_run(rerank(reranker, qs, docs, read_run(first), config, progress=False), tmp_path / "dict.run")
    with RunSpool(first, queries=qs, corpus=docs) as run:
        assert rerank_to_file(reranker, qs, docs, run, tmp_path / "stream.run", config, progress=False) == len(qs)
    assert (tmp_path / "stream.run").read_bytes() == (tmp_path / "dict.run").read_bytes()


def test_run_spool_holds_what_read_run_returns(tmp_path):
    qs, docs = collection(tmp_path, queries=5, passages=30)
    first = tmp_path / "first.run"
    write_first_stage(first, qs, docs, depth=9, grouped=False)
    whole = read_run(first)
    with RunSpool(first) as run:
        assert list(run) == list(whole)
        assert {qid: run.docs(qid) for qid in run} == whole
        assert [run.count(q) for q in run] == [len(whole[q]) for q in whole]


def test_run_spool_finds_a_duplicate_across_stretches(tmp_path):
    first = tmp_path / "first.run"
    first.write_text("1 Q0 a 1 2.0 x\n2 Q0 a 1 2.0 x\n1 Q0 a 2 1.0 x\n")
    with pytest.raises(InputError, match=r"first.run:3: duplicate entry for query '1' and docid 'a'"):
        with RunSpool(first) as run:
            run.docs("1")


def test_run_writer_writes_nothing_when_interrupted(tmp_path):
    out = tmp_path / "out.run"
    with pytest.raises(RuntimeError):
        with RunWriter(out) as writer:
            writer.add("1", {"a": 1.0})
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- readers and long lines


def test_a_10mb_line_reads_whole_in_queries_and_corpus(tmp_path):
    text = words(1_800_000, seed=3)[: 10 * MB]
    (tmp_path / "q.tsv").write_text(f"1\t{text}\n2\tshort\n")
    (tmp_path / "c.tsv").write_text(f"a\ttitle\t{text}\nb\tshort\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"docid": "a", "text": text}) + "\n")
    assert read_queries(tmp_path / "q.tsv") == {"1": text, "2": "short"}
    assert read_corpus(tmp_path / "c.tsv")["a"] == Passage("a", "title", text)
    assert read_corpus(tmp_path / "c.jsonl")["a"].text == text


def test_an_overlong_run_line_is_refused_by_line_without_reading_it(tmp_path):
    """A 10 MB line in a run (a corpus passed as the run, a file without newlines) is the wrong file."""
    first = tmp_path / "first.run"
    first.write_text("1 Q0 a 1 2.0 x\n" + "1 Q0 " + "b" * (10 * MB) + " 2 1.0 x\n")
    error = []

    def read():
        with pytest.raises(InputError) as caught:
            read_run(first)
        error.append(str(caught.value))

    peak = traced_peak(read)
    assert error[0].startswith(f"{first}:2: line longer than 65,536 characters")
    assert "\n" not in error[0]
    assert peak < 2 * MB  # today's reader holds the whole 10 MB line (and splits it) before refusing it


def test_text_line_limit_names_the_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "MAX_TEXT_LINE", 1000)
    (tmp_path / "c.jsonl").write_text('{"docid": "a", "text": "x"}\n' + json.dumps({"docid": "b", "text": "y" * 2000}))
    with pytest.raises(InputError, match=r"c.jsonl:2: line longer than 1,000 characters"):
        read_corpus(tmp_path / "c.jsonl")
