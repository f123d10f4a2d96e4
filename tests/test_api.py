"""The Python API: each function gives what its command gives, tidy rows as pandas DataFrames, and
the README's notebook example runs as written (on a tiny model)."""

import re
from pathlib import Path

import pandas as pd
import pytest

from relevance_lens import api
from relevance_lens.data.formats import Passage, read_corpus, read_queries, read_run
from relevance_lens.errors import InputError
from relevance_lens.model.reranker import Reranker
from relevance_lens.score.config import ScoreConfig, prepare
from relevance_lens.score.rerank import rerank
from relevance_lens.store import COLUMNS, Store
from trainfix import tiny_collection, tiny_train_settings

README = Path(__file__).parent.parent / "README.md"
FP32 = ScoreConfig(dtype="fp32", device="cpu", depth=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A seconds-long tiny training run through the API, and its collection."""
    root = tmp_path_factory.mktemp("api")
    collection = tiny_collection(root)
    run_dir = api.train(api.TrainConfig(**tiny_train_settings(collection, root / "run", max_steps=2, save_steps=[1])))
    return run_dir, collection


def test_train_writes_a_run_folder_with_checkpoints(trained):
    run_dir, _ = trained
    assert (run_dir / "final" / "score_head.safetensors").is_file()
    assert (run_dir / "checkpoint-1" / "manifest.json").is_file()


def test_load_reranker_scores_as_the_reranker_and_rerank_do(trained):
    run_dir, files = trained
    loaded = api.load_reranker(adapter=run_dir / "final", config=FP32)
    queries, corpus = read_queries(files["queries"]), read_corpus(files["corpus"])
    query, passages = queries["q0"], [corpus["d0"], corpus["x1"], corpus["d2"]]
    reference = Reranker.from_pretrained(adapter=run_dir / "final").eval()
    assert loaded.score(query, passages) == pytest.approx(reference.score_pairs(query, passages), abs=1e-4)
    untitled = Passage("0", "", "apt installs debian packages")
    assert loaded.score(query, [untitled.text]) == pytest.approx(loaded.score(query, [untitled]), abs=0)
    assert loaded.score(query, []) == []
    with pytest.raises(InputError, match="passage 1: a int"):
        loaded.score(query, ["text", 3])
    first = read_run(files["negatives_run"])
    expected = rerank(prepare(reference, FP32), queries, corpus, first, FP32, progress=False)
    got = loaded.rerank(queries, corpus, first)
    assert got.keys() == expected.keys()
    for qid in got:
        assert got[qid] == pytest.approx(expected[qid], abs=1e-4)


def test_analyze_returns_tidy_rows_and_stores_them(trained, tmp_path):
    run_dir, files = trained
    store = tmp_path / "results.sqlite"
    weights = api.analyze("weights", run_dir / "final", store=store)
    assert isinstance(weights, pd.DataFrame) and list(weights.columns) == list(COLUMNS)
    assert len(weights) > 0 and set(weights["analysis"]) == {"weights"} and weights["value"].notna().all()
    assert len(Store(store).rows(analysis="weights")) == len(weights)

    evalset = {k: files[k] for k in ("queries", "qrels", "corpus")}
    curve = api.analyze("checkpoints", run_dir, run=files["negatives_run"], depth=4, score=FP32, **evalset)
    assert set(curve["checkpoint"]) >= {"checkpoint-1", "final"}
    assert set(curve["metric"]) == {"nDCG@10", "RR@10"} and curve["n_queries"].eq(6).all()
    with pytest.raises(InputError, match="unknown"):
        api.analyze("nope", run_dir)


def test_results_opens_a_store_as_a_dataframe(trained, tmp_path):
    run_dir, _ = trained
    store = tmp_path / "results.sqlite"
    rows = api.analyze("weights", run_dir / "final", store=store)
    table = api.results(store)
    assert list(table.columns) == list(COLUMNS) and len(table) == len(rows)
    some = api.results(store, metric=rows["metric"].iloc[0])
    assert 0 < len(some) < len(table) and set(some["metric"]) == {rows["metric"].iloc[0]}
    with pytest.raises(InputError, match="unknown columns"):
        api.results(store, colour="red")
    with pytest.raises(InputError, match="no such results store"):
        api.results(tmp_path / "missing.sqlite")


def readme_example() -> str:
    """The code block of the README's "Python API" subsection."""
    section = README.read_text(encoding="utf-8").split("### Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's example as written, on a tiny model: its training config line is the one change."""
    code = readme_example()
    collection = tiny_collection(tmp_path)
    settings = tiny_train_settings(collection, "runs/notebook", max_steps=2, save_steps=[1])
    tiny = f"config = api.TrainConfig(**{settings!r})"
    code, replaced = re.subn(r"^config = api\.TrainConfig\(.*\)$", tiny, code, flags=re.M)
    assert replaced == 1
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    assert len(scope["scores"]) == 2 and isinstance(scope["table"], pd.DataFrame) and len(scope["table"]) > 0
    assert (tmp_path / "runs" / "notebook-export" / "model.safetensors").is_file()
