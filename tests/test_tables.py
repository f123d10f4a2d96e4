"""CSV and Parquet queries and corpora (columns guessed or named), and labelled-pairs tables split
into queries, corpus, qrels and a run."""

from __future__ import annotations

import gzip
import json
import sys

import pandas as pd
import pytest

from relevance_lens.cli import main
from relevance_lens.data.formats import Passage, read_corpus, read_qrels, read_queries, read_run
from relevance_lens.data.pairs import derived_id, import_pairs, read_pairs
from relevance_lens.data.tables import CorpusColumns, PairColumns, QueryColumns, parse_columns
from relevance_lens.errors import InputError


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run the command line in this process (as ``relevance-lens ARGS``): (exit code, stdout, stderr)."""

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["relevance-lens", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exit:
            code = exit.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


QUERIES = {"1": "how do glaciers form", "q2": 'a "quoted",\nmulti-line query'}
CORPUS = {
    "d1": Passage("d1", "Glacier", "A glacier forms from compacted snow."),
    "d2": Passage("d2", "", "Perl is a programming language."),
}


def test_csv_gz_and_parquet_read_as_the_tsv_readers_do(tmp_path):
    frame = pd.DataFrame({"qid": list(QUERIES), "query": list(QUERIES.values())})
    frame.to_csv(tmp_path / "q.csv", index=False)
    frame.to_csv(tmp_path / "q.csv.gz", index=False, compression="gzip")
    frame.to_parquet(tmp_path / "q.parquet")
    for name in ("q.csv", "q.csv.gz", "q.parquet"):
        assert read_queries(tmp_path / name) == QUERIES, name
    docs = pd.DataFrame({"DocID": ["d1", "d2"], "Title": ["Glacier", None], "Text": [p.text for p in CORPUS.values()]})
    docs.to_parquet(tmp_path / "c.parquet")  # a null title is no title; names matched ignoring case
    assert read_corpus(tmp_path / "c.parquet") == CORPUS
    docs.drop(columns="Title").to_csv(tmp_path / "c.csv", index=False)  # no title column: no titles
    assert read_corpus(tmp_path / "c.csv")["d1"] == Passage("d1", "", CORPUS["d1"].text)


def test_integer_ids_and_named_columns(tmp_path):
    # Parquet integer ids become decimal strings; a float column (an int column that held a null) too.
    pd.DataFrame({"n": [7, 8], "question": ["a", "b"], "query": ["x", "y"]}).to_parquet(tmp_path / "q.parquet")
    columns = parse_columns(QueryColumns, "id=n, text=question", "--query-columns")
    assert read_queries(tmp_path / "q.parquet", columns) == {"7": "a", "8": "b"}
    pd.DataFrame({"pid": [1.0, 2.0], "body": ["x", "y"]}).to_parquet(tmp_path / "c.parquet")
    assert list(read_corpus(tmp_path / "c.parquet", CorpusColumns(text="body"))) == ["1", "2"]


@pytest.mark.parametrize(
    "frame, name, columns, problem",
    [
        ({"qid": ["1"], "body": ["x"]}, "q.csv", None, "q.csv: no text column: none of text, query"),
        ({"qid": ["1"], "body": ["x"]}, "q.csv", None, "('qid', 'body'); name it with --query-columns text=COLUMN"),
        ({"qid": ["1"], "text": ["x"]}, "q.csv", "text=Text", "no column 'Text' (given as --query-columns text=Text)"),
        ({"qid": ["1", ""], "text": ["x", "y"]}, "q.csv", None, "q.csv:row 2: empty query id"),
        ({"qid": ["1", "2"], "text": ["x", " "]}, "q.csv", None, "q.csv:row 2: empty text for query '2'"),
        ({"qid": ["1", "2", "1"], "text": list("xyz")}, "q.csv", None, "row 3: duplicate query id '1' (also row 1)"),
        ({"qid": ["1", "a b"], "text": ["x", "y"]}, "q.csv", None, "row 2: query id 'a b' contains whitespace"),
        ({"qid": ["1", None], "text": ["x", "y"]}, "q.parquet", None, "row 2: query id in column 'qid' is null"),
        ({"qid": ["1", "2"], "text": ["x", None]}, "q.parquet", None, "row 2: text of query '2' in column 'text' is"),
        ({"qid": [1.5], "text": ["x"]}, "q.parquet", None, "row 1: query id in column 'qid' is 1.5; expected a"),
        ({"qid": ["1"], "text": [float("nan")]}, "q.parquet", None, "row 1: text of query '1' in column 'text' is"),
    ],
)
def test_bad_query_tables_name_file_row_and_column(tmp_path, frame, name, columns, problem):
    path = tmp_path / name
    (
        pd.DataFrame(frame).to_parquet
        if name.endswith(".parquet")
        else lambda p: pd.DataFrame(frame).to_csv(p, index=False)
    )(path)
    with pytest.raises(InputError) as error:
        read_queries(path, parse_columns(QueryColumns, columns, "--query-columns"))
    assert problem in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("id", "expected ROLE=COLUMN pairs"),
        ("qid=x", "unknown role 'qid'; expected some of id, text"),
        ("id=a,id=b", "role 'id' given twice"),
    ],
)
def test_bad_column_options(spec, problem):
    with pytest.raises(InputError, match=problem):
        parse_columns(QueryColumns, spec, "--query-columns")


def test_unreadable_tables_and_columns_for_tsv(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "bad.csv").write_bytes(b"id,text\n1,caf\xe9\n")
    (tmp_path / "q.tsv").write_text("1\tx\n")
    (tmp_path / "ragged.csv").write_text("qid,text\n1,a\n2,b,c\n")
    for name, problem in [
        ("empty.csv", "empty file; expected a header row"),
        ("bad.parquet", "not a readable Parquet file"),
        ("bad.csv", "is not valid UTF-8"),
        ("ragged.csv", "Expected 2 fields in line 3, saw 3; lines count the header"),
    ]:
        with pytest.raises(InputError, match=problem):
            read_queries(tmp_path / name)
    with pytest.raises(InputError, match="query columns apply to CSV and Parquet"):
        read_queries(tmp_path / "q.tsv", QueryColumns(id="qid"))


PAIRS = pd.DataFrame(
    {
        "QuestionID": ["Q1", "Q1", "Q2", "Q1", "Q3"],
        "Question": ["how do glaciers form", "how do glaciers form", "what is perl", "how do glaciers form", "why"],
        "DocumentTitle": ["Glacier", "Glacier", "Perl", "Ice", "X"],
        "SentenceID": ["D1-0", "D1-1", "D2-0", "D4-0", "D3-0"],
        "Sentence": ["Glaciers form from snow.", "Ice is cold.", "Perl is a language.", "Ice floats.", "Nothing."],
        "Label": [0, 1, 1, 0, 0],
    }
)


def test_pairs_become_queries_corpus_qrels_and_a_run(tmp_path):
    # WikiQA's column names are guessed; the run keeps each query's rows in file order (Q1: D1-0, D1-1, D4-0).
    for name, write in [
        ("p.csv", lambda p: PAIRS.to_csv(p, index=False)),
        ("p.parquet", PAIRS.to_parquet),
        ("p.tsv", lambda p: PAIRS.to_csv(p, index=False, sep="\t")),
        ("p.jsonl", lambda p: PAIRS.to_json(p, orient="records", lines=True)),
    ]:
        write(tmp_path / name)
        pairs, paths = import_pairs(tmp_path / name, tmp_path / name.replace(".", "-"))
        queries, corpus = read_queries(paths["queries"]), read_corpus(paths["corpus"])
        assert queries == {"Q1": "how do glaciers form", "Q2": "what is perl", "Q3": "why"}, name
        assert corpus["D4-0"] == Passage("D4-0", "Ice", "Ice floats."), name
        qrels = read_qrels(paths["qrels"], queries=queries, corpus=corpus)
        assert qrels == {"Q1": {"D1-0": 0, "D1-1": 1, "D4-0": 0}, "Q2": {"D2-0": 1}, "Q3": {"D3-0": 0}}, name
        run = read_run(paths["run"], queries=queries, corpus=corpus)
        assert list(run["Q1"]) == ["D1-0", "D1-1", "D4-0"] and run["Q1"]["D1-0"] > run["Q1"]["D4-0"], name
        assert pairs.rows == 5 and pairs.derived == []


def test_pairs_without_ids_get_stable_ids_from_their_text(tmp_path):
    frame = PAIRS.drop(columns=["QuestionID", "SentenceID"]).rename(columns={"Sentence": "passage"})
    frame.to_csv(tmp_path / "p.csv", index=False)
    first, second = read_pairs(tmp_path / "p.csv"), read_pairs(tmp_path / "p.csv")
    assert first.queries == second.queries and first.derived == ["query id", "docid"]
    qid = derived_id("q", "how do glaciers form")
    assert first.queries[qid] == "how do glaciers form" and len(first.queries) == 3
    assert list(first.run[qid]) == [
        derived_id("p", "Glacier", t) for t in ("Glaciers form from snow.", "Ice is cold.")
    ] + [derived_id("p", "Ice", "Ice floats.")]


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"Question": (3, "another text")}, "row 4: query id 'Q1' names another query than at row 1"),
        ({"Sentence": (2, "Ice is cold.")}, None),  # a passage text may repeat under another id
        ({"Sentence": (3, "other")}, None),
        ({"SentenceID": (3, "D1-1")}, "row 4: docid 'D1-1' names another passage than at row 2"),
        (
            {"SentenceID": (3, "D1-1"), "Sentence": (3, "Ice is cold."), "DocumentTitle": (3, "Glacier")},
            "row 4: query 'Q1' and passage 'D1-1' again (first at row 2)",
        ),
        ({"Label": (2, "yes")}, "row 3: label in column 'Label' is 'yes'; expected an integer grade"),
        ({"Label": (2, "0.5")}, "expected an integer grade"),
        ({"Question": (2, "  ")}, "row 3: empty query"),
    ],
)
def test_bad_pairs_name_both_rows(tmp_path, change, problem):
    frame = PAIRS.astype(str)
    for column, (row, value) in change.items():
        frame.loc[row, column] = value
    frame.to_csv(tmp_path / "p.csv", index=False)
    if problem is None:
        assert read_pairs(tmp_path / "p.csv").rows == 5
        return
    with pytest.raises(InputError) as error:
        import_pairs(tmp_path / "p.csv", tmp_path / "out")
    assert problem in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_pair_columns_named(tmp_path):
    frame = pd.DataFrame({"a": ["x", "x"], "b": ["p1", "p2"], "c": [1, 0]})
    frame.to_parquet(tmp_path / "p.parquet")
    with pytest.raises(InputError, match="no query column: none of query, question"):
        read_pairs(tmp_path / "p.parquet")
    pairs = read_pairs(tmp_path / "p.parquet", PairColumns(query="a", text="b", label="c"))
    assert pairs.qrels == {derived_id("q", "x"): {derived_id("p", "", "p1"): 1, derived_id("p", "", "p2"): 0}}


def test_cli_bm25_and_evaluate_read_tables_and_pairs(tmp_path, cli):
    out = tmp_path / "data"
    PAIRS.to_csv(tmp_path / "pairs.csv", index=False)
    code, stdout, stderr = cli("data", "pairs", tmp_path / "pairs.csv", "--output", out)
    assert code == 0, stderr
    assert "3 queries (1 with no relevant passage), 5 passages" in stderr
    # The queries and corpus as CSV / Parquet with other column names, through bm25's column options.
    pd.DataFrame({"n": ["Q1", "Q2"], "q": ["glaciers form", "perl language"]}).to_csv(tmp_path / "q.csv", index=False)
    corpus = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    pd.DataFrame(corpus).rename(columns={"text": "body"}).to_parquet(tmp_path / "c.parquet")
    code, stdout, stderr = cli(
        "bm25", "--queries", tmp_path / "q.csv", "--corpus", tmp_path / "c.parquet", "--output", tmp_path / "bm25.run",
        "--query-columns", "id=n,text=q", "--corpus-columns", "text=body", "--depth", 3,
    )  # fmt: skip
    assert code == 0, stderr
    assert list(read_run(tmp_path / "bm25.run")["Q1"])[0] == "D1-0"
    # evaluate the pairs' own run on their qrels, scoring exactly the queries of a CSV.
    code, stdout, stderr = cli(
        "evaluate", "--qrels", out / "qrels.txt", "--run", out / "run.trec", "--queries", tmp_path / "q.csv",
        "--query-columns", "id=n,text=q", "--json", "--metrics", "RR@10",
    )  # fmt: skip
    assert code == 0, stderr
    assert json.loads(stdout) == {"RR@10": pytest.approx((1 / 2 + 1) / 2)}
    assert "scored 2 queries" in stderr


def test_cli_bad_columns_are_one_line_and_write_nothing(tmp_path, cli):
    pd.DataFrame({"n": ["Q1"], "q": ["x"]}).to_csv(tmp_path / "q.csv", index=False)
    with gzip.open(tmp_path / "c.csv.gz", "wt") as handle:
        handle.write("docid,text\nd1,x\n")
    code, stdout, stderr = cli(
        "bm25", "--queries", tmp_path / "q.csv", "--corpus", tmp_path / "c.csv.gz", "--output", tmp_path / "r.run"
    )
    assert code == 2
    assert stderr.strip().splitlines() == [
        f"error: {tmp_path / 'q.csv'}: no id column: none of query_id, qid, queryid, query-id, _id, id among its "
        "columns ('n', 'q'); name it with --query-columns id=COLUMN"
    ]
    assert not (tmp_path / "r.run").exists()
    code, stdout, stderr = cli(
        "data", "pairs", tmp_path / "q.csv", "--output", tmp_path / "out", "--columns", "query=q,text=n"
    )
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "no label column" in stderr
    assert not (tmp_path / "out").exists()
    code, _, stderr = cli(
        "evaluate", "--qrels", tmp_path / "q.csv", "--run", tmp_path / "r.run", "--query-columns", "id=n"
    )
    assert code == 2 and "--query-columns id=n: names columns of a CSV/Parquet file; give that file too" in stderr


def test_train_data_files_reads_tables_and_pairs(tmp_path):
    from relevance_lens.train.config import load_config
    from relevance_lens.train.groups import load_groups

    PAIRS.to_parquet(tmp_path / "pairs.parquet")
    _, paths = import_pairs(tmp_path / "pairs.parquet", tmp_path / "data")
    pd.DataFrame({"query_id": ["Q1", "Q2", "Q3"], "text": ["glaciers", "perl", "why"]}).to_csv(
        tmp_path / "q.csv", index=False
    )
    corpus = pd.DataFrame([json.loads(line) for line in paths["corpus"].read_text().splitlines()])
    corpus.to_parquet(tmp_path / "c.parquet")
    config = load_config(
        None, data="files", queries=str(tmp_path / "q.csv"), corpus=str(tmp_path / "c.parquet"),
        qrels=str(paths["qrels"]), negatives_run=str(paths["run"]), output=str(tmp_path / "run"),
    )  # fmt: skip
    groups = load_groups(config)
    # Q3 has no relevant passage and cannot teach anything; Q1's negatives are its other rows, in file order.
    assert groups.positives == {"Q1": ["D1-1"], "Q2": ["D2-0"]} and groups.negatives["Q1"] == ["D1-0", "D4-0"]
    assert groups.queries["Q1"] == "glaciers" and groups.corpus["D4-0"].title == "Ice"


def test_cli_rerank_reads_named_csv_and_parquet_columns(tmp_path, cli):
    from tiny import save_tiny

    PAIRS.to_csv(tmp_path / "pairs.csv", index=False)
    _, paths = import_pairs(tmp_path / "pairs.csv", tmp_path / "data")
    pd.DataFrame({"n": ["Q1", "Q2"], "q": ["glaciers", "perl"]}).to_csv(tmp_path / "q.csv", index=False)
    corpus = pd.DataFrame([json.loads(line) for line in paths["corpus"].read_text().splitlines()])
    corpus.rename(columns={"docid": "key", "text": "body"}).to_parquet(tmp_path / "c.parquet")
    code, _, stderr = cli(
        "rerank", "--model", save_tiny("llama", tmp_path / "model"), "--queries", tmp_path / "q.csv",
        "--corpus", tmp_path / "c.parquet", "--run", paths["run"], "--output", tmp_path / "rr.run",
        "--query-columns", "id=n,text=q", "--corpus-columns", "id=key,text=body", "--dtype", "fp32",
    )  # fmt: skip
    # The run's Q3 is not among the CSV's queries: refused by name, as for a TSV; with it, all three rerank.
    assert code == 2 and "unknown query id 'Q3'" in stderr
    pd.DataFrame({"n": ["Q1", "Q2", "Q3"], "q": ["glaciers", "perl", "why"]}).to_csv(tmp_path / "q.csv", index=False)
    code, _, stderr = cli(
        "rerank", "--model", tmp_path / "model", "--queries", tmp_path / "q.csv",
        "--corpus", tmp_path / "c.parquet", "--run", paths["run"], "--output", tmp_path / "rr.run",
        "--query-columns", "id=n,text=q", "--corpus-columns", "id=key,text=body", "--dtype", "fp32",
    )  # fmt: skip
    assert code == 0, stderr
    reranked = read_run(tmp_path / "rr.run")
    assert sorted(reranked) == ["Q1", "Q2", "Q3"] and set(reranked["Q1"]) == {"D1-0", "D1-1", "D4-0"}


def test_analyze_eval_set_reads_tables(tmp_path):
    from relevance_lens.dissect.evalset import file_evalset

    PAIRS.to_csv(tmp_path / "pairs.csv", index=False)
    _, paths = import_pairs(tmp_path / "pairs.csv", tmp_path / "data")
    queries = pd.read_csv(paths["queries"], sep="\t", header=None, names=["qid", "text"])
    queries.to_parquet(tmp_path / "q.parquet")
    corpus = pd.DataFrame([json.loads(line) for line in paths["corpus"].read_text().splitlines()])
    corpus.to_csv(tmp_path / "c.csv", index=False)
    evalset = file_evalset(tmp_path / "q.parquet", paths["qrels"], tmp_path / "c.csv", paths["run"], depth=2)
    assert evalset.describe()["n_queries"] == 3 and evalset.name == "run"


def test_pairs_with_a_tab_in_a_query_write_jsonl_queries_and_an_empty_table_is_refused(tmp_path):
    frame = pd.DataFrame({"query": ["a\tb", "c"], "passage": ["x", "y"], "label": [1, 0]})
    frame.to_parquet(tmp_path / "p.parquet")
    _, paths = import_pairs(tmp_path / "p.parquet", tmp_path / "out")
    assert paths["queries"].name == "queries.jsonl" and not (tmp_path / "out" / "queries.tsv").exists()
    assert sorted(read_queries(paths["queries"]).values()) == ["a\tb", "c"]
    (tmp_path / "empty.csv").write_text("query,passage,label\n")
    with pytest.raises(InputError, match="empty.csv: no rows; expected one"):
        import_pairs(tmp_path / "empty.csv", tmp_path / "none")
    assert not (tmp_path / "none").exists()
