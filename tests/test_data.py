"""Readers and writers: bad-input table, round trips, gzip, atomic writes."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import pytest

from relevance_lens.data.formats import (
    Passage,
    TrainGroup,
    atomic_write,
    fingerprint,
    read_corpus,
    read_qrels,
    read_queries,
    read_run,
    read_tevatron,
    write_corpus,
    write_qrels,
    write_queries,
    write_run,
    write_tevatron,
)
from relevance_lens.errors import InputError

GOOD_GROUP = {
    "query_id": "1",
    "query": "what is bm25",
    "positive_passages": [{"docid": "7", "title": "", "text": "BM25 is a ranking function."}],
    "negative_passages": [],
}


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


BAD_INPUTS = [
    # (reader, file name, content, expected line, fragment of the problem)
    (read_queries, "q.tsv", "1\tok\n2\n", 2, "expected 2 tab-separated columns"),
    (read_queries, "q.tsv", "1\tok\n2\ta\tb\n", 2, "found 3"),
    (read_queries, "q.tsv", "1\tok\n\n1\tagain\n", 3, "duplicate query id '1'"),
    (read_queries, "q.tsv", "1\tok\n2\t   \n", 2, "empty text for query '2'"),
    (read_queries, "q.tsv", "\tno id\n", 1, "empty query id"),
    (
        read_queries,
        "q.tsv",
        "1\tok\n2\tcaf\xe9\n".encode("latin-1"),
        2,
        "invalid UTF-8 byte 0xe9 at byte offset 10 (column 6)",
    ),
    (read_queries, "q.jsonl", '{"_id": "1", "text": "ok"}\n{"_id": "2", "text": \n', 2, "invalid JSON"),
    (read_corpus, "c.tsv", "1\tok\n2\n", 2, "expected 2 or 3 tab-separated columns"),
    (read_corpus, "c.tsv", '{"docid": "1", "text": "x"}\n', 1, "name the file .jsonl"),
    (read_corpus, "c.tsv", "1\tok\n1\tdup\n", 2, "duplicate docid '1'"),
    (read_corpus, "c.tsv", "1\tok\n2\t \t \n", 2, "empty passage '2'"),
    (read_corpus, "c.tsv", "a b\ttext\n", 1, "contains whitespace"),
    (read_corpus, "c.jsonl", '{"docid": "1", "text": "ok"}\n{"docid": "2", "text": "x"\n', 2, "invalid JSON"),
    (read_corpus, "c.jsonl", '{"docid": "1", "text": "ok"}\n[1, 2]\n', 2, "expected a JSON object"),
    (read_corpus, "c.jsonl", '{"title": "t", "text": "x"}\n', 1, "no docid"),
    (read_corpus, "c.jsonl", '{"docid": "1"}\n', 1, "missing field 'text'"),
    (read_corpus, "c.jsonl", '{"docid": "1", "text": 5}\n', 1, "field 'text' is int"),
    (read_corpus, "c.jsonl", '{"docid": "1", "text": "ok"}\n{"_id": 1, "text": "dup"}\n', 2, "duplicate docid '1'"),
    (read_run, "r.trec", "1 Q0 a 1 2.0 t\n1 Q0 b 2 x t\n", 2, "score 'x' is not a number"),
    (read_run, "r.trec", "1 Q0 a 1 2.0 t\n1 Q0 b two 1.0 t\n", 2, "rank 'two' is not an integer"),
    (read_run, "r.trec", "1 Q0 a 1 2.0 t\n1 Q0 b 2 nan t\n", 2, "not a finite number"),
    (read_run, "r.trec", "1 Q0 a 1 2.0\n", 1, "expected 6 columns"),
    (read_run, "r.trec", "1 Q0 a 1 2.0 t\n\n1 Q0 a 2 1.0 t\n", 3, "duplicate entry for query '1' and docid 'a'"),
    (read_qrels, "q.qrels", "1 0 a 1\n1 0 b\n", 2, "BEIR's 3-column qrels"),
    (read_qrels, "q.qrels", "1 0 a 1\n1 0 b high\n", 2, "relevance 'high' is not an integer"),
    (read_qrels, "q.qrels", "1 0 a 1\n1 0 b 1.5\n", 2, "relevance '1.5' is not an integer"),
    (read_qrels, "q.qrels", "1 0 a 1\n1 0 a 0\n", 2, "duplicate judgement for query '1' and docid 'a'"),
    (read_tevatron, "t.jsonl", json.dumps(GOOD_GROUP) + "\n{bad\n", 2, "invalid JSON"),
    (read_tevatron, "t.jsonl", json.dumps({**GOOD_GROUP, "query": " "}), 1, "empty query"),
    (read_tevatron, "t.jsonl", json.dumps({**GOOD_GROUP, "positive_passages": []}), 1, "no positive passages"),
    (read_tevatron, "t.jsonl", json.dumps({**GOOD_GROUP, "negative_passages": "x"}), 1, "expected a list"),
    (read_tevatron, "t.jsonl", json.dumps({k: v for k, v in GOOD_GROUP.items() if k != "query_id"}), 1, "no query id"),
    (
        read_tevatron,
        "t.jsonl",
        json.dumps({**GOOD_GROUP, "negative_passages": [{"docid": "8", "title": "", "text": ""}]}),
        1,
        "empty passage '8'",
    ),
]


@pytest.mark.parametrize(("reader", "name", "content", "line", "problem"), BAD_INPUTS)
def test_bad_input_names_file_line_and_problem(tmp_path, reader, name, content, line, problem):
    path = _write(tmp_path, name, content)
    with pytest.raises(InputError) as caught:
        reader(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert problem in message
    assert "\n" not in message


@pytest.mark.parametrize("reader", [read_queries, read_corpus, read_run, read_qrels, read_tevatron, fingerprint])
def test_missing_file_is_input_error(tmp_path, reader):
    path = tmp_path / "absent.tsv"
    with pytest.raises(InputError, match=f"{path}: no such file"):
        reader(path)


def test_directory_is_input_error(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        read_queries(tmp_path)


def test_unknown_ids_are_checked_in_their_own_id_space(tmp_path):
    queries = {"5": "q"}
    corpus = {"7": Passage("7", "", "p")}
    run = _write(tmp_path, "r.trec", "5 Q0 7 1 1.0 t\n5 Q0 5 2 0.5 t\n")
    # docid '5' equals a qid, but it is not a passage: it must still be rejected.
    with pytest.raises(InputError, match=rf"{run}:2: unknown docid '5'"):
        read_run(run, queries=queries, corpus=corpus)
    qrels = _write(tmp_path, "q.qrels", "5 0 7 1\n7 0 7 1\n")
    with pytest.raises(InputError, match=rf"{qrels}:2: unknown query id '7'"):
        read_qrels(qrels, queries=queries, corpus=corpus)


def test_known_ids_pass_and_equal_qid_docid_are_kept(tmp_path):
    corpus = {"5": Passage("5", "", "p"), "6": Passage("6", "", "p")}
    run = _write(tmp_path, "r.trec", "5 Q0 5 1 2.0 t\n5 Q0 6 2 1.0 t\n")
    assert read_run(run, queries={"5": "q"}, corpus=corpus) == {"5": {"5": 2.0, "6": 1.0}}


def test_read_formats_and_blank_lines(tmp_path):
    queries = _write(tmp_path, "q.tsv", "\ufeff1\twhat is bm25\n\n  \n2\tcats\r\n3\tstray\rreturn\n")
    assert read_queries(queries) == {"1": "what is bm25", "2": "cats", "3": "stray\rreturn"}
    corpus = _write(tmp_path, "c.tsv", "1\tonly text\n2\tA title\tbody\n3\tTitle only\t\n")
    assert read_corpus(corpus) == {
        "1": Passage("1", "", "only text"),
        "2": Passage("2", "A title", "body"),
        "3": Passage("3", "Title only", ""),
    }
    lines = ['{"_id": 1, "title": "T", "text": "a"}', '{"id": "2", "contents": "b"}', '{"doc_id": "3", "text": "c"}']
    jsonl = _write(tmp_path, "c.jsonl", "\n".join(lines) + "\n\n")
    assert read_corpus(jsonl) == {
        "1": Passage("1", "T", "a"),
        "2": Passage("2", "", "b"),
        "3": Passage("3", "", "c"),
    }
    beir_queries = _write(tmp_path, "queries.jsonl", '{"_id": "q1", "text": "hello", "metadata": {}}\n')
    assert read_queries(beir_queries) == {"q1": "hello"}


def test_run_and_qrels_accept_tabs_and_ignore_rank(tmp_path):
    run = _write(tmp_path, "r.trec", "1\tQ0\ta\t7\t0.5\tt\n1 Q0 b 1 1.5 t\n")
    assert read_run(run) == {"1": {"a": 0.5, "b": 1.5}}
    qrels = _write(tmp_path, "q.qrels", "1\t0\ta\t2\n1 0 b -1\n")
    assert read_qrels(qrels) == {"1": {"a": 2, "b": -1}}


def test_gzip_read_transparently(tmp_path):
    plain = {"1": "first", "2": "second"}
    path = tmp_path / "queries.tsv.gz"
    path.write_bytes(gzip.compress(b"1\tfirst\n2\tsecond\n"))
    assert read_queries(path) == plain
    corpus = tmp_path / "corpus.jsonl.gz"
    corpus.write_bytes(gzip.compress(b'{"docid": "1", "text": "x"}\n'))
    assert read_corpus(corpus) == {"1": Passage("1", "", "x")}
    # Detected from the bytes, not the name.
    misnamed = tmp_path / "qrels.txt"
    misnamed.write_bytes(gzip.compress(b"1 0 a 1\n"))
    assert read_qrels(misnamed) == {"1": {"a": 1}}


def test_gzip_non_utf8_names_line(tmp_path):
    path = tmp_path / "q.tsv.gz"
    path.write_bytes(gzip.compress(b"1\tok\n2\tbad \xff byte\n"))
    with pytest.raises(InputError, match=rf"{path}:2: invalid UTF-8 byte 0xff at byte offset 11"):
        read_queries(path)


def test_corrupt_gzip_is_input_error(tmp_path):
    path = tmp_path / "q.tsv.gz"
    path.write_bytes(gzip.compress(b"1\tfirst\n" * 100)[:-20])
    with pytest.raises(InputError, match="corrupt gzip data"):
        read_queries(path)


@pytest.mark.parametrize("name", ["c.tsv", "c.jsonl", "c.jsonl.gz"])
def test_corpus_round_trip(tmp_path, name):
    corpus = {
        "10": Passage("10", "", "plain ascii"),
        "2": Passage("2", "Título", "ünïcödé text"),
        "x-1": Passage("x-1", "T", 'quotes " and \\ backslash'),
    }
    write_corpus(corpus, tmp_path / name)
    assert read_corpus(tmp_path / name) == corpus


@pytest.mark.parametrize("name", ["q.tsv", "q.jsonl"])
def test_queries_round_trip(tmp_path, name):
    queries = {"1": "what is bm25", "1000": "ñandú"}
    write_queries(queries, tmp_path / name)
    assert read_queries(tmp_path / name) == queries


def test_tsv_writers_refuse_tabs_in_text(tmp_path):
    with pytest.raises(InputError, match="contains a tab or newline; write JSONL"):
        write_corpus({"1": Passage("1", "", "a\tb")}, tmp_path / "c.tsv")
    assert not (tmp_path / "c.tsv").exists()
    with pytest.raises(InputError, match="contains a tab or newline"):
        write_queries({"1": "a\nb"}, tmp_path / "q.tsv")


def test_run_round_trip_order_ties_and_depth(tmp_path):
    run = {"10": {"b": 1.0, "a": 1.0, "c": 3.25}, "2": {"z": 0.1}, "1": {}}
    path = tmp_path / "run.trec"
    write_run(run, path, tag="bm25")
    assert path.read_text().splitlines() == [
        "2 Q0 z 1 0.1 bm25",
        "10 Q0 c 1 3.25 bm25",
        "10 Q0 b 2 1.0 bm25",  # ties keep the run's order, not the docids'
        "10 Q0 a 3 1.0 bm25",
    ]
    assert read_run(path) == {"10": run["10"], "2": run["2"]}
    write_run(run, path, depth=2)
    assert read_run(path)["10"] == {"c": 3.25, "b": 1.0}


def test_run_scores_round_trip_exactly(tmp_path):
    run = {"1": {"a": 0.1 + 0.2, "b": -1e-300, "c": 123456789.123456789}}
    write_run(run, tmp_path / "r.trec")
    assert read_run(tmp_path / "r.trec") == run


@pytest.mark.parametrize(
    ("run", "kwargs", "problem"),
    [
        ({"1": {"a": float("nan")}}, {}, "expected a finite number"),
        ({"1": {"a b": 1.0}}, {}, "docid 'a b' is empty or contains whitespace"),
        ({"1": {"a": 1.0}}, {"tag": "my tag"}, "run tag 'my tag'"),
        ({"1": {"a": 1.0}}, {"depth": 0}, "depth=0"),
    ],
)
def test_write_run_rejects_unwritable_input(tmp_path, run, kwargs, problem):
    path = tmp_path / "r.trec"
    with pytest.raises(InputError, match=problem):
        write_run(run, path, **kwargs)
    assert not path.exists()


def test_write_many_queries_deep(tmp_path):
    run = {str(q): {f"d{d}": float(d % 97) for d in range(1000)} for q in range(50)}
    write_run(run, tmp_path / "big.trec")
    assert read_run(tmp_path / "big.trec") == run


def test_qrels_round_trip(tmp_path):
    qrels = {"3": {"b": 0, "a": 2}, "1": {"1": 1}}
    write_qrels(qrels, tmp_path / "q.qrels")
    assert read_qrels(tmp_path / "q.qrels") == qrels
    assert (tmp_path / "q.qrels").read_text().splitlines()[0] == "1 0 1 1"


def test_tevatron_round_trip_and_id_aliases(tmp_path):
    groups = [
        TrainGroup("1", "what is bm25", [Passage("7", "", "BM25 ranks.")], [Passage("8", "T", "neg")]),
        TrainGroup("2", "cats", [Passage("9", "Cat", "purr")], []),
    ]
    write_tevatron(groups, tmp_path / "train.jsonl")
    assert read_tevatron(tmp_path / "train.jsonl") == groups
    alias = {**{k: v for k, v in GOOD_GROUP.items() if k != "query_id"}, "_id": 3}
    path = _write(tmp_path, "t.jsonl", json.dumps(alias) + "\n")
    assert read_tevatron(path)[0].query_id == "3"


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.tsv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as handle:
            handle.write("partial" * 1000)
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.tsv"]


def test_atomic_write_failure_creates_nothing(tmp_path):
    path = tmp_path / "new" / "out.tsv.gz"
    with pytest.raises(RuntimeError):
        with atomic_write(path) as handle:
            handle.write("partial")
            raise RuntimeError("crash")
    assert os.listdir(tmp_path / "new") == []


def test_atomic_write_success_creates_parents_bytes_and_gzip(tmp_path):
    with atomic_write(tmp_path / "a" / "b.bin", mode="wb") as handle:
        handle.write(b"\x00\x01")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    with atomic_write(tmp_path / "c.txt.gz") as handle:
        handle.write("zipped\n")
    assert gzip.decompress((tmp_path / "c.txt.gz").read_bytes()) == b"zipped\n"
    assert sorted(os.listdir(tmp_path)) == ["a", "c.txt.gz"]


def test_atomic_write_rejects_other_modes(tmp_path):
    with pytest.raises(InputError, match="mode='a'"):
        with atomic_write(tmp_path / "x", mode="a"):
            pass


def test_fingerprint_is_sha256_of_bytes(tmp_path):
    path = _write(tmp_path, "f.tsv", "1\tabc\n")
    assert fingerprint(path) == hashlib.sha256(b"1\tabc\n").hexdigest()


@pytest.mark.parametrize(
    "name,text",
    [
        ("q.txt", "q1 0 d1 1\nq1 0 \ufeff 0\n"),
        ("r.run", "q1 Q0 d1 1 2.0 t\nq1 Q0 d\ufeff2 2 1.0 t\n"),
    ],
)
def test_a_byte_order_mark_inside_a_trec_id_is_refused_naming_the_line(tmp_path, name, text):
    # Found by the slow qrels fuzzer: the reader took '\ufeff' as a docid that the writer then refused.
    from relevance_lens.data.formats import read_qrels, read_run

    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    reader = read_qrels if name == "q.txt" else read_run
    with pytest.raises(InputError, match=rf"{name}:2: .*byte-order mark"):
        reader(path)
