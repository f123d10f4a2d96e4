"""Training from an ir_datasets id (``train --dataset``): a tiny MS MARCO-shaped dataset registered
with ir_datasets from local files; negatives from its scoreddocs in their order, else its docpairs,
else refused; only the passages the groups use are fetched; the id is recorded in run.json."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from irdsfix import register, write_lines
from relevance_lens.cli import app
from relevance_lens.errors import InputError
from relevance_lens.train.config import TrainConfig, load_config
from relevance_lens.train.groups import load_groups
from relevance_lens.train.trainer import train
from tiny import save_tiny

# Query 1's run: ties (5, 2, 9 all score 3) must keep this order, never docid order; 0 is its positive.
RUN_Q1 = [("5", 3.0), ("2", 3.0), ("0", 5.0), ("9", 3.0), ("1", 2.0), ("7", 1.0)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("irds")
    docs = write_lines(root / "collection.tsv", [f"{i}\tpassage {i} about python and debian" for i in range(20)])
    queries = write_lines(root / "queries.tsv", ["1\thow do i sort a list", "2\twhat is the capital of france"])
    qrels = write_lines(root / "qrels", ["1 0 0 1", "2 0 10 1"])
    run = [f"1 Q0 {d} {k + 1} {s} bm25" for k, (d, s) in enumerate(RUN_Q1)]
    run += [f"2 Q0 {d} {k + 1} {10.0 - k} bm25" for k, d in enumerate(["11", "10", "12", "13", "14"])]
    pairs = ["1\t0\t8", "1\t0\t3", "2\t10\t4", "1\t0\t8", "1\t0\t6", "2\t10\t10", "2\t10\t15"]
    return {
        "root": root,
        "base": {"docs": docs, "queries": queries, "qrels": qrels},
        "scoreddocs": write_lines(root / "bm25.run", run),
        "docpairs": write_lines(root / "triples.tsv", pairs),
        "model": str(save_tiny("llama", root / "model")),
    }


def _config(dataset: str, **overrides) -> TrainConfig:
    return TrainConfig(**{"data": "dataset", "dataset": dataset, "negatives_depth": 4, "group_size": 3, **overrides})


def test_negatives_come_from_scoreddocs_in_their_order_and_only_used_passages_are_fetched(files):
    name = register("msmarco-like/train", **files["base"], scoreddocs=files["scoreddocs"], docpairs=files["docpairs"])
    groups = load_groups(_config(name))
    # Top 4 by score with ties in the run's order (0, 5, 2, 9), minus the positive; scoreddocs win over docpairs.
    assert groups.negatives["1"] == ["5", "2", "9"]
    assert groups.negatives["2"] == ["11", "12", "13"]
    assert groups.positives == {"1": ["0"], "2": ["10"]}
    assert sorted(groups.corpus, key=int) == ["0", "2", "5", "9", "10", "11", "12", "13"]  # not the other 12
    assert groups.corpus["5"].text == "passage 5 about python and debian"
    assert groups.fingerprints == {"ir_datasets": name, "negatives": f"ir_datasets {name} scoreddocs"}


def test_without_scoreddocs_negatives_come_from_docpairs(files):
    name = register("msmarco-like/triples", **files["base"], docpairs=files["docpairs"])
    groups = load_groups(_config(name, negatives_depth=2))
    # Each query's doc_id_b in file order, once each, never a judged positive, at most depth of them.
    assert groups.negatives == {"1": ["8", "3"], "2": ["4", "15"]}
    assert groups.fingerprints["negatives"] == f"ir_datasets {name} docpairs"


def test_a_dataset_without_negatives_is_refused_in_one_line(files):
    name = register("msmarco-like/bare", **files["base"])
    with pytest.raises(InputError) as caught:
        load_groups(_config(name))
    message = str(caught.value)
    assert "\n" not in message and "neither scoreddocs nor docpairs" in message and "--negatives-run" in message
    # A run file stands in for the missing first stage.
    groups = load_groups(_config(name, negatives_run=str(files["scoreddocs"])))
    assert groups.negatives["1"] == ["5", "2", "9"]


def test_dataset_mixed_with_files_is_refused(files):
    with pytest.raises(InputError, match=r"--dataset x/y: replaces --queries; give one or the other"):
        load_config(dataset="x/y", queries=str(files["base"]["queries"]))
    with pytest.raises(InputError, match=r"with data 'files'"):
        load_config(dataset="x/y", data="files")
    assert load_config(dataset="x/y").data == "dataset"  # implied when data is not given
    r = CliRunner().invoke(app, ["train", "--dataset", "x/y", "--queries", str(files["base"]["queries"])])
    assert isinstance(r.exception, InputError) and "--dataset x/y: replaces --queries" in str(r.exception)
    assert not (files["root"] / "runs").exists()


def test_train_from_a_dataset_records_its_id(files, tmp_path):
    name = register("msmarco-like/train", **files["base"], scoreddocs=files["scoreddocs"])
    config = load_config(
        model=files["model"],
        output=str(tmp_path / "run"),
        dataset=name,
        negatives_depth=4,
        group_size=3,
        queries_per_device=2,
        max_steps=2,
        save_steps=[1],
        max_length=48,
        precision="fp32",
        compile="off",
        warmup_steps=0,
    )
    run_dir = train(config, progress=False)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["config"]["dataset"] == name and record["config"]["data"] == "dataset"
    assert record["data_fingerprints"]["ir_datasets"] == name
    assert record["resolved"]["train_queries"] == 2
    assert (run_dir / "checkpoint-1" / "manifest.json").is_file() and (run_dir / "final" / "manifest.json").is_file()
